"""Keeps the children of the local stack running: what systemd's `Restart=on-failure`, compose's
`restart: unless-stopped` and Kubernetes give a deployed stack.

A child that exits while the stack is not stopping is started again after a capped exponential backoff
(0.5 s, 1 s, 2 s ... 30 s; back to 0.5 s once it stayed up for a minute). A restart that fails (the new
process exits or never becomes ready) counts as another failure: a crash loop keeps being retried every
30 s, and each attempt is logged with the child's exit status and the tail of its log. The supervisor never
stops the stack. Every state change is written to the stack's status file (lookalike.stack_status), which
the gateway turns into `lookalike_stack_restarts_total{child}` on /metrics and a detail of /healthz.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lookalike import stack_status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Delay before restart number `failures` (1 = the first after a healthy run)."""
    initial_s: float = 0.5
    max_s: float = 30.0
    healthy_reset_s: float = 60.0  # up this long: the next exit starts again from initial_s

    def delay(self, failures: int) -> float:
        return min(self.max_s, self.initial_s * 2 ** max(0, failures - 1))


@dataclass
class Child:
    """One supervised child process.

    `alive()`: is it running; `exit_status()`: how it ended ("killed by SIGKILL", "exit status 1");
    `log_tail()`: the last lines of its log; `pid()`: its pid (for the status file);
    `restart(stopping)`: starts it again and returns once it is ready, raises when it is not (gives up
    early, raising, once `stopping` is set)."""
    name: str
    alive: Callable[[], bool]
    exit_status: Callable[[], str]
    log_tail: Callable[[], str]
    pid: Callable[[], int | None]
    restart: Callable[[threading.Event], None]


def describe_exit(returncode: int | None) -> str:
    """subprocess returncode -> "exit status N" / "killed by SIGKILL"."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class Supervisor:
    """Watches `children` (one thread each, polling every `poll_s`) until `stopping` is set."""

    def __init__(self, children: list[Child], status_path: str | Path, stopping: threading.Event,
                 backoff: Backoff = Backoff(), poll_s: float = 0.2):
        self.children = children
        self.status_path = Path(status_path)
        self.stopping = stopping
        self.backoff = backoff
        self.poll_s = poll_s
        self.restarts = {child.name: 0 for child in children}
        self._records: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> "Supervisor":
        for child in self.children:
            self._record(child, "up", pid=child.pid())
        for child in self.children:
            thread = threading.Thread(target=self._watch, args=(child,), daemon=True,
                                      name=f"supervise {child.name}")
            thread.start()
            self._threads.append(thread)
        return self

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # ---- one child ----------------------------------------------------------------------------------

    def _watch(self, child: Child) -> None:
        failures, up_since = 0, time.monotonic()
        while not self.stopping.wait(self.poll_s):
            if child.alive():
                continue
            if self.stopping.is_set():
                return
            if time.monotonic() - up_since >= self.backoff.healthy_reset_s:
                failures = 0
            exit_status = child.exit_status()
            reason = f"exited unexpectedly ({exit_status}) after {time.monotonic() - up_since:.0f}s up"
            while True:
                failures += 1
                delay = self.backoff.delay(failures)
                looping = delay >= self.backoff.max_s
                log.error("%s %s; restarting it in %.1fs (restart %d%s)\n--- last lines of its log:\n%s",
                          child.name, reason, delay, self.restarts[child.name] + 1,
                          f"; crash loop: {failures} failures without a minute of health, retrying every "
                          f"{self.backoff.max_s:.0f}s" if looping else "", child.log_tail())
                self._record(child, "down", last_exit=exit_status, reason=reason, retry_at=time.time() + delay)
                if self.stopping.wait(delay):
                    return
                self.restarts[child.name] += 1
                self._record(child, "restarting", last_exit=exit_status, reason=reason)
                started = time.monotonic()
                try:
                    child.restart(self.stopping)
                    break
                except Exception as exc:  # noqa: BLE001 - any failure to come back is retried
                    if self.stopping.is_set():
                        return
                    exit_status = child.exit_status() if not child.alive() else "not ready"
                    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    reason = f"did not come back after {time.monotonic() - started:.0f}s: {first_line}"
            if self.stopping.is_set():
                return
            up_since = time.monotonic()
            log.warning("%s is back (pid %s) after %d restart(s)", child.name, child.pid(), self.restarts[child.name])
            self._record(child, "up", pid=child.pid())

    def _record(self, child: Child, state: str, **fields) -> None:
        with self._lock:
            record = {"state": state, "restarts": self.restarts[child.name], "since": time.time(), **fields}
            previous = self._records.get(child.name, {})
            if state == "restarting" and previous.get("since"):
                record["since"] = previous["since"]  # down since the exit, not since this attempt
            if state == "down" and previous.get("state") in ("down", "restarting"):
                record["since"] = previous["since"]
            self._records[child.name] = record
            try:
                stack_status.write(self.status_path, self._records)
            except OSError as exc:
                log.warning("cannot write %s: %s", self.status_path, exc)
