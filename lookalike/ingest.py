"""Client-side catalogue ingestion: streams a catalogue's products (lookalike.catalogue_reader) to the
gateway's UpsertProducts, shows progress, reports outcomes and failures.

Everything is streamed: the catalogue is read lazily, at most `read_ahead` images are in memory on
this side, and the gRPC stream's flow control holds the rest back, so memory stays flat whatever the
catalogue's size. Ids are stable, and the gateway skips products whose image and metadata are already
stored (UNCHANGED, no embedding): running the same command again after an interruption (Ctrl-C,
kill -9, a lost connection) resumes where the acknowledged products end.
"""
from __future__ import annotations

import itertools
import json
import os
import stat
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from lookalike import api_keys
from lookalike.catalogue_reader import CatalogueItem
from lookalike.grpc_channel import CLIENT_OPTIONS
from lookalike.limits import DEFAULT_MAX_UPLOAD_BYTES
from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc

KEPT_FAILURES = 1000  # in IngestReport.failures; the failures file gets every one
Outcome = lookalike_pb2.UpsertProductsResponse


def read_image_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes; OSError/ValueError with a reason otherwise (a FIFO,
    a device or a folder is refused without blocking on it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise ValueError(f"{path} is {info.st_size} bytes, above the {max_bytes}-byte limit")
        if info.st_size == 0:
            raise ValueError(f"{path} is empty")
        chunks, left = [], info.st_size + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise ValueError(f"{path} grew above the {max_bytes}-byte limit while being read")
        return data
    finally:
        os.close(fd)


def _read(item: CatalogueItem, max_bytes: int) -> tuple[list[bytes], str]:
    """The bytes of each of the item's images, or ([], why not)."""
    if item.error:
        return [], item.error
    out = []
    for path in item.image_paths:
        try:
            out.append(read_image_file(path, max_bytes))
        except OSError as exc:
            return [], f"cannot read {path}: {exc.strerror or exc}"
        except ValueError as exc:
            return [], str(exc)
    return out, ""


def _requests(items: Iterable[CatalogueItem], local_errors: dict[int, str], skip_duplicates: bool = False,
              max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, workers: int = 4,
              read_ahead: int = 64) -> Iterator[lookalike_pb2.UpsertProductsRequest]:
    """Reads image files in parallel with a bounded read-ahead window; yields requests in catalogue order.

    An item that cannot be sent (unreadable, too big, a bad catalogue entry) is sent without its image, so
    the gateway fails it in order; `local_errors[sequence number]` says why."""
    with ThreadPoolExecutor(workers, thread_name_prefix="read") as pool:
        remaining = iter(items)
        window: deque = deque((item, pool.submit(_read, item, max_bytes))
                              for item in itertools.islice(remaining, read_ahead))
        sequence = 0
        while window:
            item, future = window.popleft()
            following = next(remaining, None)
            if following is not None:
                window.append((following, pool.submit(_read, following, max_bytes)))
            photos, error = future.result()
            if error:
                local_errors[sequence] = error
            sequence += 1
            yield lookalike_pb2.UpsertProductsRequest(product=item.product, image=photos[0] if photos else b"",
                                                      more_images=photos[1:], skip_duplicates=skip_duplicates)


@dataclass
class IngestReport:
    total: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped: int = 0  # duplicates not stored (skip_duplicates)
    duplicates: int = 0  # duplicates reported (stored, or skipped)
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[dict] = field(default_factory=list)  # the first KEPT_FAILURES
    duplicate_list: list[dict] = field(default_factory=list)  # the first KEPT_FAILURES

    @property
    def done(self) -> int:
        return self.created + self.updated + self.unchanged + self.failed + self.skipped

    @property
    def indexed(self) -> int:
        """Products stored and acknowledged: created, updated or already there unchanged."""
        return self.created + self.updated + self.unchanged

    @property
    def rate(self) -> float:
        """Products acknowledged per second."""
        return self.done / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        line = (f"{'interrupted: ' if self.interrupted else ''}{self.done} of {self.total} products in "
                f"{self.seconds:.1f}s ({self.rate:.1f}/s): {self.created} new, {self.updated} updated, "
                f"{self.unchanged} unchanged, {self.failed} failed")
        if self.duplicates:
            line += f"; {self.duplicates} duplicates ({self.skipped} skipped)"
        return line


class _Sink:
    """Where failures and duplicates go as they arrive: the report (the first few) and the report files."""

    def __init__(self, report: IngestReport, failures_file: Path | None, duplicates_file: Path | None):
        self.report = report
        self.paths = {"failures": failures_file, "duplicates": duplicates_file}
        self.handles: dict = {}
        for path in self.paths.values():
            if path is not None:
                Path(path).unlink(missing_ok=True)  # a file from an earlier run would mislead

    def write(self, kind: str, record: dict) -> None:
        kept = self.report.failures if kind == "failures" else self.report.duplicate_list
        if len(kept) < KEPT_FAILURES:
            kept.append(record)
        path = self.paths[kind]
        if path is None:
            return
        if kind not in self.handles:
            self.handles[kind] = open(path, "w")
        self.handles[kind].write(json.dumps(record) + "\n")
        self.handles[kind].flush()

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()


def index_items(address: str, items: Iterable[CatalogueItem], api_key: str | None = None, progress: bool = True,
                timeout_s: float | None = None, total: int | None = None, skip_duplicates: bool = False,
                failures_file: Path | None = None, duplicates_file: Path | None = None,
                max_image_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> IngestReport:
    """Streams `items` to the gateway's UpsertProducts; returns counts and per-item failures.

    Ctrl-C (KeyboardInterrupt) cancels the stream and returns what was acknowledged so far with
    `interrupted` set; everything acknowledged is stored. Transport failures raise grpc.RpcError."""
    from tqdm import tqdm

    if total is None:
        items = list(items)
        total = len(items)
    report = IngestReport(total=total)
    sink = _Sink(report, failures_file, duplicates_file)
    local_errors: dict[int, str] = {}
    metadata = api_keys.metadata(api_key)
    started = time.perf_counter()
    bar = tqdm(total=total, unit="item", disable=not progress, dynamic_ncols=True, desc="indexing", smoothing=0.1)
    shown = 0.0
    responses = None
    try:
        with grpc.insecure_channel(address, options=CLIENT_OPTIONS) as channel:
            stub = lookalike_pb2_grpc.LookalikeStub(channel)
            responses = stub.UpsertProducts(_requests(items, local_errors, skip_duplicates, max_image_bytes),
                                            metadata=metadata, timeout=timeout_s)
            for sequence, response in enumerate(responses):
                _count(report, sink, response, local_errors.pop(sequence, None))
                bar.update(1)
                now = time.monotonic()
                if now - shown > 0.5:
                    shown = now
                    bar.set_postfix(new=report.created, updated=report.updated, unchanged=report.unchanged,
                                    failed=report.failed, refresh=False)
    except KeyboardInterrupt:
        report.interrupted = True
        if responses is not None:
            responses.cancel()
    finally:
        bar.set_postfix(new=report.created, updated=report.updated, unchanged=report.unchanged,
                        failed=report.failed, refresh=False)
        bar.close()
        sink.close()
        report.seconds = time.perf_counter() - started
    return report


def _count(report: IngestReport, sink: _Sink, response, local_error: str | None) -> None:
    outcome = response.outcome
    if outcome == Outcome.OUTCOME_FAILED:
        report.failed += 1
        sink.write("failures", {"id": response.product_id, "error": local_error or response.error})
        return
    if outcome == Outcome.OUTCOME_UNCHANGED:
        report.unchanged += 1
    elif outcome == Outcome.OUTCOME_UPDATED:
        report.updated += 1
    elif outcome == Outcome.OUTCOME_SKIPPED_DUPLICATE:
        report.skipped += 1
    else:  # OUTCOME_CREATED
        report.created += 1
    if response.duplicate_of:
        report.duplicates += 1
        sink.write("duplicates", {"id": response.product_id, "duplicate_of": response.duplicate_of,
                                  "exact": response.exact_duplicate,
                                  "similarity": round(float(response.duplicate_similarity), 4),
                                  "skipped": outcome == Outcome.OUTCOME_SKIPPED_DUPLICATE})
