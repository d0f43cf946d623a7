"""What /proc says about a process group (Linux): which of its processes are alive, and their command lines.
TorchServe starts java, which starts Python workers, all in the launcher's process group; stopping it
completely means finding them there (lookalike.torchserve_process)."""
from __future__ import annotations

import os
from pathlib import Path


def group_alive(pgid: int) -> bool:
    """True while any process of the group exists (one we may not signal counts)."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def group_pids(pgid: int) -> list[int]:
    """Pids of the group's live processes (zombies left out)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            # fields[0] = state, fields[2] = pgrp
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


def command_line(pid: int) -> list[bytes]:
    """The process's argv ([] once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []
