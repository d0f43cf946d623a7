"""CPU priority of a local stack's children: with LOOKALIKE_EMBEDDER_NICE > 0, `lookalike serve` runs TorchServe
(java and its Python workers) at a lower priority than the gateway, search service and Redis, so a cache hit
(a Redis GET and a search) is not queued behind embedding work when the cores are busy.

Off by default, measured (bench/hit_priority.py, both sides in one run, 2 cores shared with other work at load
7-14; bench/results/hit_priority.json and hit_priority-paced.json): under 32 closed-loop clients with 20% new
photos, nice 5 took cache hits from p50 192 / p99 844 ms to 108 / 449 ms, but new photos from p50 0.35 s to
1.6 s (973 shed with 503 against 56). Paced at 100 QPS the hits' tail did not improve (p99 0.15-3.8 s either
way) while new photos went from p50 150 ms to 855 ms: the embedder ranks below *every* other process on the
machine, not only the gateway, so on a busy machine it starves. Worth it on a machine that runs only the
stack, when cache hits matter more than new photos.

Two knobs, both set: the nice value of the processes (`nice -n N` in front of the launch command, so java
and every worker it starts inherit it) and the nice value of the session's autogroup. With the kernel's
autogroup scheduling on (/proc/sys/kernel/sched_autogroup_enabled, the default on desktop and many server
kernels), CPU is first shared between sessions and a process's own nice value only counts inside its
session; every child of the stack is a session of its own, so only the autogroup's nice value ranks
TorchServe against the gateway. Deployed with compose or Kubernetes, each service has its own container
and CPU requests/limits do this job instead (see deploy/).

Setting: LOOKALIKE_EMBEDDER_NICE (0..19; default 0 = the same priority as the rest; 5 was measured).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Mapping

log = logging.getLogger(__name__)

ENV = "LOOKALIKE_EMBEDDER_NICE"
DEFAULT_EMBEDDER_NICE = 0  # off: see the module docstring for the measured trade-off
MAX_NICE = 19


def embedder_nice(environ: Mapping[str, str] | None = None) -> int:
    """LOOKALIKE_EMBEDDER_NICE from the environment, validated (a bad value stops the stack, naming it)."""
    from lookalike.settings import ConfigError

    raw = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not raw:
        return DEFAULT_EMBEDDER_NICE
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{ENV}: must be an integer 0..{MAX_NICE} (got {raw!r})") from None
    return check_nice(value)


def check_nice(value: int) -> int:
    from lookalike.settings import ConfigError

    if not 0 <= value <= MAX_NICE:
        raise ConfigError(f"{ENV}: must be 0..{MAX_NICE} (0 = same priority as the other services; "
                          f"higher = lower priority) (got {value})")
    return value


def niced(argv: list[str], nice: int) -> list[str]:
    """`argv` run at nice value `nice` (coreutils `nice`: exec, no preexec_fn); unchanged for 0."""
    if nice <= 0:
        return list(argv)
    program = shutil.which("nice")
    if program is None:
        log.warning("no `nice` program: %s runs at normal priority", argv[0])
        return list(argv)
    return [program, "-n", str(nice), "--", *argv]


def renice(pid: int, nice: int) -> bool:
    """Sets the nice value of process `pid` and of each of its threads (on Linux setpriority acts on one
    thread). False when it is gone or not allowed."""
    ok = True
    tasks = Path(f"/proc/{pid}/task")
    tids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [pid]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            ok = False
    return ok


def set_autogroup_nice(pid: int, nice: int) -> bool:
    """Sets the nice value of `pid`'s autogroup (its session, when autogroup scheduling is on).
    False when the kernel has no autogroups or it is not allowed (then only process nice values count)."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
        return True
    except OSError as exc:
        log.debug("cannot set the autogroup nice of %d: %s", pid, exc)
        return False
