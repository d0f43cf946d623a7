"""lookalike.supervisor with real child processes (`sleep`) and fast backoff: restarts, the backoff and its
cap, crash loops, the status file and what the gateway exports from it (/metrics, /healthz detail)."""
from __future__ import annotations

import logging
import subprocess
import threading
import time

from prometheus_client import CollectorRegistry

from lookalike import stack_status
from lookalike.supervisor import Backoff, Child, Supervisor, describe_exit
from lookalike_gateway.stack_metrics import StackStatusMetrics


class SleepChild:
    """A `sleep` process the test kills; `failures_left` restarts fail before one succeeds."""

    def __init__(self, name: str, failures_left: int = 0):
        self.name = name
        self.failures_left = failures_left
        self.proc = subprocess.Popen(["sleep", "600"])
        self.starts = threading.Semaphore(0)  # released on each successful restart

    def restart(self, stopping: threading.Event) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError(f"{self.name} did not start\nmore detail")
        self.proc = subprocess.Popen(["sleep", "600"])
        self.starts.release()

    def child(self) -> Child:
        return Child(self.name, lambda: self.proc.poll() is None, lambda: describe_exit(self.proc.returncode),
                     lambda: "last line of the log", lambda: self.proc.pid, self.restart)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_backoff_doubles_to_the_cap():
    backoff = Backoff()
    assert [backoff.delay(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.healthy_reset_s == 60


def test_describe_exit():
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(3) == "exit status 3"


def test_a_killed_child_is_restarted_counted_and_reported(tmp_path, caplog):
    status = tmp_path / stack_status.FILE_NAME
    steady, flaky = SleepChild("redis-server"), SleepChild("search service", failures_left=3)
    stopping = threading.Event()
    supervisor = Supervisor([steady.child(), flaky.child()], status, stopping,
                            Backoff(initial_s=0.01, max_s=0.04), poll_s=0.01)
    caplog.set_level(logging.WARNING, logger="lookalike.supervisor")
    try:
        supervisor.start()
        assert {n: r["state"] for n, r in stack_status.read(status).items()} == {
            "redis-server": "up", "search service": "up"}
        steady.kill()
        assert steady.starts.acquire(timeout=60)
        flaky.kill()  # three failed restarts, then it comes back: four restarts counted
        assert flaky.starts.acquire(timeout=60)
        wait_for(lambda: stack_status.read(status)["search service"]["state"] == "up")
        wait_for(lambda: stack_status.read(status)["redis-server"]["state"] == "up")
        children = stack_status.read(status)
        assert children["redis-server"]["restarts"] == 1 and children["search service"]["restarts"] == 4
        assert children["search service"]["pid"] == flaky.proc.pid

        registry = CollectorRegistry()
        registry.register(StackStatusMetrics(status))
        assert registry.get_sample_value("lookalike_stack_restarts_total", {"child": "search service"}) == 4
        assert registry.get_sample_value("lookalike_stack_child_up", {"child": "redis-server"}) == 1
    finally:
        stopping.set()
        supervisor.join(10)
        steady.close()
        flaky.close()
    text = caplog.text
    assert "redis-server exited unexpectedly (killed by SIGKILL)" in text and "last line of the log" in text
    assert "search service did not come back" in text and "did not start" in text
    assert "crash loop" in text  # 0.01, 0.02, 0.04, 0.04: the cap was reached and said so


def test_stopping_ends_supervision_without_restarts(tmp_path):
    status = tmp_path / stack_status.FILE_NAME
    child = SleepChild("gateway")
    stopping = threading.Event()
    supervisor = Supervisor([child.child()], status, stopping, Backoff(initial_s=0.01), poll_s=0.01).start()
    stopping.set()
    child.kill()  # what Stack.stop does: the supervisor must not bring it back
    supervisor.join(10)
    assert not any(t.is_alive() for t in supervisor._threads)
    assert child.proc.returncode is not None and stack_status.read(status)["gateway"]["restarts"] == 0


def test_health_detail_names_what_is_down(tmp_path):
    path = tmp_path / stack_status.FILE_NAME
    now = time.time()
    stack_status.write(path, {
        "redis-server": {"state": "up", "restarts": 1, "since": now, "pid": 7},
        "torchserve": {"state": "down", "restarts": 2, "since": now - 5, "last_exit": "killed by SIGKILL",
                       "reason": "exited unexpectedly", "retry_at": now + 4}})
    detail = stack_status.health_detail(path)
    assert detail["redis-server"] == {"state": "up", "restarts": 1}
    down = detail["torchserve"]
    assert down["state"] == "down" and down["last_exit"] == "killed by SIGKILL" and down["restarts"] == 2
    assert 0 < down["restart_in_s"] <= 4 and down["down_for_s"] >= 5
    assert stack_status.health_detail(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{half")
    assert stack_status.read(tmp_path / "bad.json") is None
    registry = CollectorRegistry()
    registry.register(StackStatusMetrics(tmp_path / "missing.json"))
    assert registry.get_sample_value("lookalike_stack_restarts_total", {"child": "torchserve"}) is None


def test_a_minute_of_health_resets_the_backoff(tmp_path, caplog):
    """Three quick exits in a row reach the cap (0.01, 0.02, 0.04 s: "crash loop"); with the healthy
    period at 0 each exit starts again from the first delay."""
    caplog.set_level(logging.WARNING, logger="lookalike.supervisor")
    for reset_s, looping in ((60.0, True), (0.0, False)):
        caplog.clear()
        child = SleepChild(f"child-{reset_s}")
        stopping = threading.Event()
        supervisor = Supervisor([child.child()], tmp_path / f"{reset_s}.json", stopping,
                                Backoff(initial_s=0.01, max_s=0.04, healthy_reset_s=reset_s), poll_s=0.01).start()
        try:
            for _ in range(3):
                child.kill()
                assert child.starts.acquire(timeout=60)
        finally:
            stopping.set()
            supervisor.join(10)
            child.close()
        assert ("crash loop" in caplog.text) is looping, caplog.text
        assert "(restart 3" in caplog.text
