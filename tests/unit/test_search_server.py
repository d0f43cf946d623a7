"""lookalike_search.server, the process: the port file, opening the registry until it is ready."""
from __future__ import annotations

import threading

import pytest

from lookalike_search.server import open_until_ready, write_port_file
from lookalike_search.store import CollectionMismatch, StoreError


def test_port_file_is_atomic(tmp_path):
    target = tmp_path / "sub" / "port"
    write_port_file(target, 1234)
    write_port_file(target, 4321)
    assert target.read_text() == "4321\n"
    assert [p.name for p in target.parent.iterdir()] == ["port"]


class Opening:
    """A registry whose open() fails with the given errors, then succeeds."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.opened = 0

    def open(self):
        self.opened += 1
        if self.errors:
            raise self.errors.pop(0)


def test_open_until_ready_retries_only_transient_failures():
    stopping = threading.Event()
    registry = Opening(StoreError("qdrant starting", unavailable=True))
    assert open_until_ready(registry, stopping) is True and registry.opened == 2
    with pytest.raises(CollectionMismatch):
        open_until_ready(Opening(CollectionMismatch("vector size 8, not 4")), stopping)
    with pytest.raises(StoreError):
        open_until_ready(Opening(StoreError("corrupt shard")), stopping)
    stopping.set()
    assert open_until_ready(Opening(), stopping) is False
