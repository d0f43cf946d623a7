"""The gateway's job runner (lookalike_gateway.jobs): one job of a kind at a time, progress, results,
failures, the last N kept, and the REST / gRPC wire forms."""
from __future__ import annotations

import threading

import grpc
import pytest

from lookalike.v1 import types_pb2
from lookalike_gateway.errors import ApiError
from lookalike_gateway.jobs import JobRunner, JobState, job_json, job_proto


def test_a_job_runs_reports_progress_and_succeeds():
    runner = JobRunner("demo")
    midway, go_on = threading.Event(), threading.Event()

    def work(progress):
        progress(0.25, "first half")
        progress(0.1)  # never goes back
        midway.set()
        go_on.wait(10)
        progress.span(0.5, 1.0)(0.5, "second half")
        return {"answer": 42}

    job = runner.start(work, stage="starting")
    assert job.state == JobState.RUNNING and job.id.startswith("demo-") and job.started_at
    assert midway.wait(10)
    now = runner.get(job.id)
    assert now.progress == 0.25 and now.stage == "first half" and runner.running().id == job.id
    go_on.set()
    done = runner.wait(job.id, 10)
    assert done.state == JobState.SUCCEEDED and done.result == {"answer": 42} and done.progress == 1.0
    assert done.finished_at >= done.started_at and runner.running() is None

    body = job_json(done, result_key="report")
    assert body["state"] == "succeeded" and body["report"] == {"answer": 42} and body["error"] is None
    assert body["created_at"].endswith("Z") and body["finished_at"]
    proto = job_proto(done)
    assert proto.state == types_pb2.JOB_STATE_SUCCEEDED and proto.progress == 1.0 and proto.kind == "demo"


def test_one_at_a_time_then_free_again():
    runner = JobRunner("demo", describe="a demo")
    release = threading.Event()
    first = runner.start(lambda progress: release.wait(10) and {})
    with pytest.raises(ApiError) as err:
        runner.start(lambda progress: {})
    assert err.value.code == grpc.StatusCode.ABORTED and first.id in err.value.message
    assert "a demo is already running" in err.value.message
    release.set()
    assert runner.wait(first.id, 10).state == JobState.SUCCEEDED
    second = runner.start(lambda progress: {"n": 2})
    assert runner.wait(second.id, 10).result == {"n": 2}


def test_failures_land_on_the_job():
    runner = JobRunner("demo")

    def refused(progress):
        progress(0.4)
        raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "nothing to learn from")

    failed = runner.wait(runner.start(refused).id, 10)
    assert failed.state == JobState.FAILED and failed.result is None and failed.progress == 0.4
    assert failed.error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert job_json(failed)["error"] == {"code": "FAILED_PRECONDITION", "message": "nothing to learn from"}
    proto = job_proto(failed)
    assert proto.state == types_pb2.JOB_STATE_FAILED and proto.error_code == "FAILED_PRECONDITION"

    crashed = runner.wait(runner.start(lambda progress: 1 / 0).id, 10)
    assert crashed.state == JobState.FAILED and crashed.error.code == grpc.StatusCode.INTERNAL
    assert "ZeroDivisionError" in crashed.error.message


def test_unknown_ids_are_not_found_and_old_jobs_are_forgotten():
    runner = JobRunner("demo", keep=2)
    ids = [runner.wait(runner.start(lambda progress: {}).id, 10).id for _ in range(3)]
    with pytest.raises(ApiError) as err:
        runner.get(ids[0])
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert runner.get(ids[2]).state == JobState.SUCCEEDED
    runner.close()
    with pytest.raises(ApiError) as err:
        runner.start(lambda progress: {})
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
