"""Long work as jobs: started by one request, read by others, never holding a request open.

A `JobRunner` runs the jobs of one kind (classifier training, adaptation...) one at a time on its own
worker thread. `start(work)` answers at once with the job (state QUEUED/RUNNING); the work gets a
`Progress` to report a fraction done and a stage; the result (a JSON-able dict) or the failure
(an ApiError, or INTERNAL for anything else) lands on the job. While a job runs, `start` raises
ABORTED (HTTP 409) naming it. The last `keep` jobs stay readable by id (`get`, NOT_FOUND otherwise);
jobs live in the gateway's memory: a restart forgets them (what they produced is persisted by the work).

Transports share the wire forms here: `job_json` (REST, see api_models.Job) and `job_proto`
(gRPC, lookalike.v1.JobStatus).
"""
from __future__ import annotations

import contextvars
import datetime as dt
import enum
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from lookalike.v1 import types_pb2

from .errors import SHUTTING_DOWN, ApiError, not_found

log = logging.getLogger(__name__)

DEFAULT_KEEP = 20


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def done(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED)


@dataclass(frozen=True)
class Job:
    """An immutable snapshot of a job (the runner replaces it as the job moves)."""

    id: str
    kind: str
    state: JobState = JobState.QUEUED
    progress: float = 0.0  # 0..1
    stage: str = "queued"
    created_at: float = field(default_factory=time.time)  # Unix seconds
    started_at: float | None = None
    finished_at: float | None = None
    result: dict | None = None
    error: ApiError | None = None


class Progress:
    """What the work reports through: `progress(fraction, stage)`; the fraction never goes back."""

    def __init__(self, runner: "JobRunner", job_id: str):
        self._runner = runner
        self._job_id = job_id

    def __call__(self, fraction: float, stage: str | None = None) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        self._runner._update(self._job_id, lambda job: replace(
            job, progress=max(job.progress, fraction), stage=stage or job.stage))

    def span(self, start: float, end: float) -> Callable[[float, str | None], None]:
        """A reporter mapping 0..1 onto [start, end] of this job (for one phase of the work)."""
        return lambda fraction, stage=None: self(start + (end - start) * min(1.0, max(0.0, fraction)), stage)


class JobRunner:
    """Jobs of one kind, one at a time, on a worker thread; the last `keep` readable by id."""

    def __init__(self, kind: str, keep: int = DEFAULT_KEEP, describe: str | None = None):
        self.kind = kind
        self.describe = describe or kind  # for messages: "a classifier training"
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._done: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._running: str | None = None
        self._closed = False

    def start(self, work: Callable[[Progress], dict], stage: str = "starting") -> Job:
        """Starts `work(progress)` on a new thread and returns the job; ABORTED while one runs."""
        with self._lock:
            if self._closed:
                raise ApiError(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            if self._running is not None:
                running = self._jobs[self._running]
                since = time.time() - (running.started_at or running.created_at)
                raise ApiError(grpc.StatusCode.ABORTED,
                               f"{self.describe} is already running (job {running.id}, for {since:.0f}s, "
                               f"{running.progress:.0%} done); retry when it is done")
            job = Job(id=f"{self.kind}-{secrets.token_hex(6)}", kind=self.kind, state=JobState.RUNNING,
                      stage=stage, started_at=time.time())
            self._jobs[job.id] = job
            self._done[job.id] = threading.Event()
            self._running = job.id
            while len(self._jobs) > self.keep:  # forget the oldest finished ones
                oldest = next(iter(self._jobs))
                if oldest == job.id:
                    break
                self._jobs.pop(oldest)
                self._done.pop(oldest, None)
        context = contextvars.copy_context()  # the request id follows into the worker's logs
        thread = threading.Thread(target=context.run, args=(self._run, job.id, work),
                                  name=f"job-{job.id}", daemon=True)
        try:
            thread.start()
        except BaseException:
            self._finish(job.id, None, ApiError(grpc.StatusCode.UNAVAILABLE, "cannot start a worker thread"))
            raise
        return job

    def _run(self, job_id: str, work: Callable[[Progress], dict]) -> None:
        try:
            result = work(Progress(self, job_id))
        except ApiError as exc:
            log.info("job %s failed: %s %s", job_id, exc.code.name, exc.message)
            self._finish(job_id, None, exc)
        except Exception as exc:  # noqa: BLE001 - reported on the job, not lost in a thread
            log.exception("job %s failed", job_id)
            self._finish(job_id, None, ApiError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
        else:
            self._finish(job_id, result, None)

    def _finish(self, job_id: str, result: dict | None, error: ApiError | None) -> None:
        state = JobState.FAILED if error is not None else JobState.SUCCEEDED
        self._update(job_id, lambda job: replace(
            job, state=state, result=result, error=error, finished_at=time.time(),
            progress=1.0 if error is None else job.progress, stage="done" if error is None else "failed"))
        with self._lock:
            if self._running == job_id:
                self._running = None
            done = self._done.get(job_id)
        if done is not None:
            done.set()

    def _update(self, job_id: str, change: Callable[[Job], Job]) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                self._jobs[job_id] = change(job)

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise not_found(f"{self.kind} job", job_id,
                            f"no {self.kind} job {job_id!r} (jobs are kept in memory: the last {self.keep}, "
                            "until the gateway restarts)")
        return job

    def running(self) -> Job | None:
        with self._lock:
            return self._jobs.get(self._running) if self._running else None

    def wait(self, job_id: str, timeout: float | None) -> Job:
        """The job once done, or as it stands when `timeout` seconds have passed."""
        self.get(job_id)
        with self._lock:
            done = self._done.get(job_id)
        if done is not None:
            done.wait(timeout)
        return self.get(job_id)

    def close(self) -> None:
        """Refuses new jobs (the running one finishes on its daemon thread or dies with the process)."""
        with self._lock:
            self._closed = True


# ---- wire forms -----------------------------------------------------------------------------------

def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_json(job: Job, result_key: str = "result") -> dict[str, Any]:
    """The REST form (api_models.Job); the result under `result_key` (e.g. "report")."""
    return {
        "id": job.id, "kind": job.kind, "state": job.state.value, "progress": round(job.progress, 4),
        "stage": job.stage, "created_at": iso(job.created_at), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "error": None if job.error is None else {"code": job.error.code.name, "message": job.error.message},
        result_key: job.result,
    }


_PROTO_STATE = {
    JobState.QUEUED: types_pb2.JOB_STATE_QUEUED, JobState.RUNNING: types_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: types_pb2.JOB_STATE_SUCCEEDED, JobState.FAILED: types_pb2.JOB_STATE_FAILED,
}


def job_proto(job: Job) -> types_pb2.JobStatus:
    """The gRPC form (lookalike.v1.JobStatus); the kind's result goes in the kind's own message."""
    status = types_pb2.JobStatus(id=job.id, kind=job.kind, state=_PROTO_STATE[job.state], progress=job.progress,
                                 stage=job.stage, created_at=iso(job.created_at) or "",
                                 started_at=iso(job.started_at) or "", finished_at=iso(job.finished_at) or "")
    if job.error is not None:
        status.error_code = job.error.code.name
        status.error_message = job.error.message
    return status
