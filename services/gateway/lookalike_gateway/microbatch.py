"""Micro-batches of a (possibly slow, blocking) stream of items."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import grpc


def batches(items: Iterable, size: int, max_wait_s: float, idle_s: float = 0.05) -> Iterator[list | None]:
    """Groups a (possibly slow, blocking) stream into batches of at most `size`, without holding an item
    longer than `max_wait_s` once the stream pauses; yields None every `idle_s` while nothing arrives."""
    q: queue.Queue = queue.Queue(maxsize=size * 2)  # bounded: a fast client waits (gRPC flow control)
    done = object()
    failure: list[BaseException] = []

    def read():
        try:
            for item in items:
                q.put(item)
        except BaseException as exc:  # the client went away: end the stream, report after the items read
            failure.append(exc)
        finally:
            q.put(done)

    threading.Thread(target=read, daemon=True, name="ingest-reader").start()
    finished = False
    while not finished:
        try:
            first = q.get(timeout=idle_s)
        except queue.Empty:
            yield None
            continue
        if first is done:
            break
        batch = [first]
        while len(batch) < size:
            try:
                item = q.get(timeout=max_wait_s)
            except queue.Empty:
                break
            if item is done:
                finished = True
                break
            batch.append(item)
        yield batch
    if failure and not isinstance(failure[0], grpc.RpcError):
        raise failure[0]
