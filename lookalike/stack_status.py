"""The status file of a supervised local stack (`lookalike serve`).

The supervisor (lookalike.supervisor) rewrites it atomically whenever a child changes state; the gateway
reads it on every /metrics scrape (`lookalike_stack_restarts_total{child}`, `lookalike_stack_child_up{child}`)
and /healthz (which children are down, why, and when the next restart is). One JSON object:

    {"updated": 1764600000.0,
     "children": {"redis-server": {"state": "up", "pid": 123, "restarts": 0, "since": 1764599990.0},
                  "search service": {"state": "down", "restarts": 3, "since": ..., "last_exit": "killed by
                                     SIGKILL", "reason": "...", "retry_at": 1764600030.0}}}

`state` is "up", "down" (waiting for its next restart) or "restarting" (started again, not ready yet).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lookalike import atomic

FILE_NAME = "stack-status.json"


def write(path: str | os.PathLike, children: dict[str, dict]) -> None:
    """Replaces the file atomically (a reader sees the old or the new content, never half of it)."""
    path = Path(path)
    data = json.dumps({"updated": time.time(), "children": children}, indent=1, sort_keys=True)
    atomic.write_text(path, data, fsync=False)  # rewritten on every change: atomic, not fsynced


def read(path: str | os.PathLike | None) -> dict[str, dict] | None:
    """The children's records, or None when there is no (readable) status file."""
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
        children = data["children"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return children if isinstance(children, dict) else None


def health_detail(path: str | os.PathLike | None) -> dict | None:
    """For /healthz: every child's state and restarts; for a child that is not up, also its last exit,
    why it is down and in how many seconds it is started again."""
    children = read(path)
    if children is None:
        return None
    now, detail = time.time(), {}
    for name, record in sorted(children.items()):
        entry = {"state": record.get("state", "?"), "restarts": int(record.get("restarts", 0))}
        if entry["state"] != "up":
            for key in ("last_exit", "reason"):
                if record.get(key):
                    entry[key] = record[key]
            if record.get("retry_at"):
                entry["restart_in_s"] = round(max(0.0, record["retry_at"] - now), 1)
            if record.get("since"):
                entry["down_for_s"] = round(max(0.0, now - record["since"]), 1)
        detail[name] = entry
    return detail
