"""gRPC channel and server options, one fact each: every channel and server of the project takes its option
list from here (a leaf module: it imports only lookalike.limits). The sizes themselves live in
lookalike.limits."""
from __future__ import annotations

from lookalike.limits import MAX_GRPC_MESSAGE_BYTES

Options = list[tuple[str, object]]

#: Reconnect within ~1 s once a service is back (gRPC's default backoff grows to 120 s, which would keep a
#: restarted embedder or search service "down" long after it returned).
RECONNECT_OPTIONS: Options = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                              ("grpc.max_reconnect_backoff_ms", 1000)]

#: Never route the channel through an HTTP proxy taken from the environment (local health checks).
NO_PROXY_OPTIONS: Options = [("grpc.enable_http_proxy", 0)]


def message_limits(send: int | None = MAX_GRPC_MESSAGE_BYTES, receive: int | None = MAX_GRPC_MESSAGE_BYTES) -> Options:
    """The largest message sent and received (None: gRPC's default, 4 MiB received, unlimited sent)."""
    options: Options = []
    if receive is not None:
        options.append(("grpc.max_receive_message_length", receive))
    if send is not None:
        options.append(("grpc.max_send_message_length", send))
    return options


#: A client of the gateway: uploads up to our largest message (a product with its photos); answers are small.
CLIENT_OPTIONS: Options = message_limits(receive=None)


def service_channel_options(receive: int = MAX_GRPC_MESSAGE_BYTES) -> Options:
    """A long-lived channel from one of our services to another (the gateway to the search service and the
    embedder): our largest message sent, `receive` received, and a quick reconnect."""
    return [*message_limits(receive=receive), *RECONNECT_OPTIONS]


def server_options(max_message_bytes: int = MAX_GRPC_MESSAGE_BYTES) -> Options:
    """A grpc.server's: messages up to `max_message_bytes` both ways, and no SO_REUSEPORT (a second server
    on a taken port fails to bind instead of sharing it)."""
    return [*message_limits(send=max_message_bytes, receive=max_message_bytes), ("grpc.so_reuseport", 0)]
