"""gRPC channel and server options have one home (lookalike/grpc_channel.py): the lists it gives, and no option
key spelled anywhere else in the product (tests may spell their own, e.g. a hostile client's limits)."""
from __future__ import annotations

import re
from pathlib import Path

from lookalike import grpc_channel
from lookalike.limits import MAX_GRPC_MESSAGE_BYTES

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "lookalike" / "grpc_channel.py"
OPTION_KEY = re.compile(r"""["']grpc\.[a-z_.]+["']""")


def test_the_option_lists():
    assert dict(grpc_channel.CLIENT_OPTIONS) == {"grpc.max_send_message_length": MAX_GRPC_MESSAGE_BYTES}
    service = dict(grpc_channel.service_channel_options(receive=123))
    assert service["grpc.max_receive_message_length"] == 123
    assert service["grpc.max_send_message_length"] == MAX_GRPC_MESSAGE_BYTES
    assert service["grpc.max_reconnect_backoff_ms"] == 1000  # back within ~1 s of a restart
    assert dict(grpc_channel.server_options(456)) == {"grpc.max_receive_message_length": 456,
                                                      "grpc.max_send_message_length": 456, "grpc.so_reuseport": 0}


def test_no_option_key_is_spelled_outside_its_home():
    spelled = []
    for folder in ("lookalike", "services", "bench", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == HOME or "_pb2" in path.name:
                continue
            spelled += [f"{path.relative_to(ROOT)}: {key}" for key in OPTION_KEY.findall(path.read_text())]
    assert not spelled, "gRPC options belong in lookalike/grpc_channel.py:\n" + "\n".join(spelled)
