"""lookalike.priority: the embedder's lower CPU priority in a local stack (setting, launch, autogroup)."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lookalike import priority
from lookalike.settings import ConfigError

HAS_AUTOGROUP = Path("/proc/self/autogroup").exists()


def test_setting_default_and_valid_values():
    assert priority.embedder_nice({}) == priority.DEFAULT_EMBEDDER_NICE == 0
    assert priority.embedder_nice({priority.ENV: ""}) == 0
    assert priority.embedder_nice({priority.ENV: "5"}) == 5
    assert priority.embedder_nice({priority.ENV: "0"}) == 0
    assert priority.embedder_nice({priority.ENV: " 19 "}) == 19


@pytest.mark.parametrize("raw", ["abc", "2.5", "-1", "20"])
def test_bad_setting_stops_naming_it(raw):
    with pytest.raises(ConfigError, match="LOOKALIKE_EMBEDDER_NICE"):
        priority.embedder_nice({priority.ENV: raw})


def test_niced_leaves_zero_alone_and_prefixes_nice():
    assert priority.niced(["python", "-V"], 0) == ["python", "-V"]
    argv = priority.niced(["python", "-V"], 7)
    assert argv[1:] == ["-n", "7", "--", "python", "-V"] and argv[0].endswith("nice")


CHILD = ("import os, subprocess, sys; print(os.getpriority(os.PRIO_PROCESS, 0)); "
         "print(subprocess.run([sys.executable, '-c', 'import os; print(os.getpriority(os.PRIO_PROCESS, 0))'], "
         "capture_output=True, text=True).stdout.strip())")


def test_niced_child_and_its_children_run_at_that_priority():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    out = subprocess.run(priority.niced([sys.executable, "-c", CHILD], 5), capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(min(19, base + 5))] * 2  # the child, and the process it starts (TorchServe's workers)


def _read_fifo(path: Path, timeout: float = 60.0) -> str:
    """Everything one writer sends through the named pipe `path`, read as it arrives (a handshake: no polling);
    fails after `timeout` s without a writer or an end. Linux: select() reports neither data nor end before a
    writer has opened the pipe."""
    deadline = time.monotonic() + timeout
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"nothing came through {path} within {timeout:.0f} s"
            chunk = os.read(fd, 4096)
            if not chunk:
                return b"".join(chunks).decode()
            chunks.append(chunk)
    finally:
        os.close(fd)


def test_renice_sets_every_thread():
    code = ("import threading, time, sys; e = threading.Event(); "
            "[threading.Thread(target=e.wait, daemon=True).start() for _ in range(3)]; "
            "print('up', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        base = os.getpriority(os.PRIO_PROCESS, proc.pid)
        assert priority.renice(proc.pid, min(19, base + 3))
        tids = [int(t.name) for t in Path(f"/proc/{proc.pid}/task").iterdir()]
        assert len(tids) >= 4
        assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in tids} == {min(19, base + 3)}
    finally:
        proc.stdin.close()
        proc.wait(10)


def _autogroup(pid) -> tuple[str, str]:
    """(name, nice) of a process's autogroup; ("", "") for the root group, which the kernel prints as nothing
    (a process whose session never had a group of its own, as under some CI runners)."""
    fields = Path(f"/proc/{pid}/autogroup").read_text().split()  # "/autogroup-1869 nice 0"
    return (fields[0], fields[-1]) if fields else ("", "")


@pytest.mark.skipif(not HAS_AUTOGROUP, reason="kernel without autogroup scheduling")
def test_autogroup_of_a_new_session_gets_the_nice_value():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert priority.set_autogroup_nice(proc.pid, 9)
        name, nice = _autogroup(proc.pid)
        assert nice == "9"
        # its own group, not ours (ours may be the root group, which /proc shows as empty)
        assert name != _autogroup("self")[0]
    finally:
        proc.stdin.close()
        proc.wait(10)


def test_set_autogroup_nice_of_a_gone_process_is_false():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert priority.set_autogroup_nice(int(proc.stdout), 5) is False


def test_torchserve_launcher_starts_the_server_niced_in_its_own_lower_autogroup(tmp_path):
    """TorchServeProcess(nice=N) launches its command (here a stand-in `python` that reports its priority)
    at nice N, in its own session whose autogroup has nice N."""
    from lookalike.torchserve_process import TorchServeProcess

    report = tmp_path / "report"
    os.mkfifo(report)
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\nnice > {report}\nexec sleep 30\n")
    fake_python.chmod(0o755)
    ts = TorchServeProcess(tmp_path / "ts", tmp_path / "store", python=str(fake_python), nice=6)
    for d in (ts.data_dir, ts.log_dir, ts.tmp_dir, ts.model_store):
        d.mkdir(parents=True, exist_ok=True)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    ts._launch()
    try:
        assert _read_fifo(report).strip() == str(min(19, base + 6))
        if HAS_AUTOGROUP:  # _launch sets it before returning (the child's session exists once Popen returns)
            assert _autogroup(ts.pid)[1] == "6"
    finally:
        os.killpg(ts.pid, 9)
        ts.proc.wait(10)
        ts._out.close()


def test_torchserve_launcher_rejects_a_bad_nice(tmp_path):
    from lookalike.torchserve_process import TorchServeProcess

    with pytest.raises(ConfigError, match="LOOKALIKE_EMBEDDER_NICE"):
        TorchServeProcess(tmp_path, tmp_path, nice=25)


def test_stack_reads_the_setting_before_starting_anything(tmp_path, monkeypatch):
    from lookalike.stack import Stack, StackConfig

    monkeypatch.setenv(priority.ENV, "nope")
    with pytest.raises(ConfigError, match="LOOKALIKE_EMBEDDER_NICE"):
        Stack(StackConfig(data_dir=tmp_path))
    assert not (tmp_path / "logs").exists()
    monkeypatch.delenv(priority.ENV)
    assert Stack(StackConfig(data_dir=tmp_path)).embedder_nice == priority.DEFAULT_EMBEDDER_NICE
    monkeypatch.setenv(priority.ENV, "5")
    assert Stack(StackConfig(data_dir=tmp_path)).embedder_nice == 5
    assert Stack(StackConfig(data_dir=tmp_path, embedder_nice=0)).embedder_nice == 0
