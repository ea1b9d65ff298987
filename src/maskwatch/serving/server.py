"""Run the app under uvicorn with a deadline for slow clients' request headers.

uvicorn closes idle keep-alive connections, but a client that trickles its request headers a
byte at a time holds a connection for ever. ``HeaderTimeoutProtocol`` gives every request
``header_timeout_s`` to deliver its headers (from the connection's start, or from the end of
the previous answer), then answers 408 and closes. Body stalls are handled by the app
(``Settings.body_timeout_s``).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Seconds a client has to send a request's headers.
HEADER_TIMEOUT_S = 10.0


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request's headers."""

    header_timeout_s = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.our_state is h11.IDLE:
            body = b'{"detail":"request headers took too long"}'
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: " + str(len(body)).encode()
                + b"\r\n\r\n" + body
            )
        self.transport.close()


def protocol_class(header_timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """A HeaderTimeoutProtocol subclass with this deadline (uvicorn takes a class)."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,),
                {"header_timeout_s": float(header_timeout_s)})


def server_config(app, host: str, port: int, header_timeout_s: float = HEADER_TIMEOUT_S,
                  log_level: str = "info"):
    """A uvicorn Config for ``app`` with the slow-client deadline."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          http=protocol_class(header_timeout_s), timeout_keep_alive=5,
                          timeout_graceful_shutdown=5)


def serve_in_thread(app, host: str = "127.0.0.1", header_timeout_s: float = HEADER_TIMEOUT_S,
                    log_level: str = "error", start_timeout_s: float = 10.0):
    """Start ``app`` on a free port of ``host`` in a daemon thread (benchmarks, tests).

    Returns (server, thread, port); stop it with ``server.should_exit = True`` and
    ``thread.join()``.
    """
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(server_config(app, host, port, header_timeout_s, log_level))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, thread, port
