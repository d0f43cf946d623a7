"""microbatch.py: a stream cut into batches that also flush when the stream pauses."""
from __future__ import annotations

import threading

from lookalike_gateway.microbatch import batches as _batches


def test_micro_batches_flush_when_the_stream_pauses():
    flushed = threading.Event()

    def paused_stream():  # pauses until the consumer saw the lone item flushed: no sleep, no race
        yield from range(5)
        assert flushed.wait(30), "a lone item was not flushed while the stream paused"
        yield from range(5, 7)

    batches = []
    for batch in _batches(paused_stream(), size=4, max_wait_s=0.02):
        if batch is not None:
            batches.append(batch)
            if batch == [4]:
                flushed.set()
    assert [x for b in batches for x in b] == list(range(7))
    assert batches == [[0, 1, 2, 3], [4], [5, 6]]
