"""lookalike.atomic: a write replaces the file whole or not at all, and fsyncs what the caller asks for."""
from __future__ import annotations

import os

import numpy as np
import pytest

from lookalike import atomic


@pytest.fixture
def fsyncs(monkeypatch):
    calls = []
    real = os.fsync

    def spy(fd):
        calls.append(os.path.isdir(f"/proc/self/fd/{fd}"))  # True for a folder
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


def test_writes_replace_the_file_and_leave_no_temporary_file(tmp_path):
    target = tmp_path / "pointer"
    target.write_text("old\n")
    assert atomic.write_text(target, "new\n") == target
    assert target.read_text() == "new\n"
    atomic.write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic.write_with(tmp_path / "a.npz", lambda out: np.savez(out, x=np.arange(3)))
    with np.load(tmp_path / "a.npz") as data:
        assert data["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "pointer"]


def test_a_failed_write_keeps_the_old_content(tmp_path):
    target = tmp_path / "meta.json"
    target.write_text("old")

    def half(out):
        out.write(b"half a fi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_with(target, half)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_fsync_of_the_file_and_the_folder_as_asked(tmp_path, fsyncs):
    atomic.write_text(tmp_path / "durable", "x")
    assert fsyncs == [False, True]  # the file's data, then the folder (the rename)
    fsyncs.clear()
    atomic.write_text(tmp_path / "photo", "x", fsync=True, fsync_dir=False)
    assert fsyncs == [False]
    fsyncs.clear()
    atomic.write_text(tmp_path / "status", "x", fsync=False)
    assert fsyncs == []
