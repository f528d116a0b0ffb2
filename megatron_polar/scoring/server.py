"""HTTP reward server (standard library only): ``POST /score``, ``POST /get_reward``, ``GET /health``.

One thread per connection parses and encodes requests; a single :class:`DynamicBatcher` worker owns the
model. Errors are JSON ``{"error": message}`` with a 4xx status and never stop the server. SIGTERM and
SIGINT stop accepting connections, let in-flight requests finish, drain the batcher and return.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from megatron_polar.scoring.batcher import DynamicBatcher
from megatron_polar.scoring.chat_template import ChatTemplate, RolloutParser
from megatron_polar.scoring.requests import RequestError
from megatron_polar.scoring.service import RewardService
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)

# An OpenRLHF batch of 1,024 rollouts with 8k-token responses and 8k-token labels is about 70 MB of
# ASCII JSON; JSON escapes of non-ASCII text (\uXXXX) can triple that.
DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024
_READ_CHUNK = 1 << 20
# An oversized body up to this size is read and discarded before the 413, so that the client gets the
# answer instead of a connection reset in the middle of its upload; a larger one is cut off.
_DRAIN_BYTES = 1 << 30


class _Handler(BaseHTTPRequestHandler):
    server: PolarRewardServer
    protocol_version = "HTTP/1.1"  # keep-alive for clients that reuse connections
    server_version = "megatron-polar-rm"

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout_s  # idle keep-alive connections close after this
        super().setup()
        # Small responses on a keep-alive connection: without this, Nagle plus delayed ACKs stall ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection or self.server.stopping:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message, "status": status})

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path == "/health":
            self._send(HTTPStatus.OK, self.server.service.health())
        elif self.path in self.server.routes:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.path} takes POST")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no endpoint {self.path}; try /score, /get_reward, /health")

    def _too_large(self, size: str) -> RequestError:
        self.close_connection = True  # whatever was not drained stays unread: no reuse of this connection
        return RequestError(
            f"request body of {size} exceeds the limit of {self.server.max_body_bytes} bytes; start the "
            "server with a larger --max-body-bytes, or send fewer rollouts per request",
            status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )

    def _discard(self, n: int) -> None:
        while n > 0 and (chunk := self.rfile.read(min(_READ_CHUNK, n))):
            n -= len(chunk)

    def _read_fixed(self, n: int) -> bytes:
        """``n`` bytes read in chunks, so that a slow or truncated upload fails cleanly."""
        buf = bytearray()
        while len(buf) < n:
            chunk = self.rfile.read(min(_READ_CHUNK, n - len(buf)))
            if not chunk:
                self.close_connection = True
                raise RequestError(f"request body ended after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def _read_chunked(self) -> bytes:
        """A ``Transfer-Encoding: chunked`` body, refused as soon as it passes the limit."""
        buf = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise RequestError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers, up to the blank line
                    pass
                return bytes(buf)
            if len(buf) + size > self.server.max_body_bytes:
                self._drain_chunks(len(buf), size)
                raise self._too_large(f"more than {len(buf) + size} bytes (chunked)")
            buf += self._read_fixed(size)
            self.rfile.readline(1024)  # the CRLF after each chunk

    def _drain_chunks(self, seen: int, size: int) -> None:
        """Discard the rest of a chunked body (up to the drain cap), the current chunk of ``size`` first."""
        while 0 < size and seen + size <= _DRAIN_BYTES:
            self._discard(size)
            seen += size
            self.rfile.readline(1024)
            try:
                size = int(self.rfile.readline(1024).split(b";", 1)[0].strip(), 16)
            except ValueError:
                return
        if size == 0:
            while self.rfile.readline(1024).strip():
                pass

    def _read_json(self) -> Any:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = self._read_chunked()
        else:
            length = self.headers.get("Content-Length")
            if length is None:
                self.close_connection = True
                raise RequestError(
                    "missing Content-Length header (or Transfer-Encoding: chunked)",
                    status=HTTPStatus.LENGTH_REQUIRED,
                )
            try:
                n = int(length)
            except ValueError:
                self.close_connection = True
                raise RequestError(f"bad Content-Length {length!r}") from None
            if n > self.server.max_body_bytes:
                if n <= _DRAIN_BYTES:
                    self._discard(n)
                raise self._too_large(f"{n} bytes")
            raw = self._read_fixed(n)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"invalid JSON: {exc}") from None

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        route = self.server.routes.get(self.path)
        try:
            if route is None:
                self.close_connection = True
                raise RequestError(
                    f"no endpoint {self.path}; try /score or /get_reward", HTTPStatus.NOT_FOUND
                )
            body = self._read_json()
            self._send(HTTPStatus.OK, route(body))
        except RequestError as exc:
            self._error(exc.status, str(exc))
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            log.exception("internal error on %s", self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}: {exc}")


class PolarRewardServer(ThreadingHTTPServer):
    """A threading HTTP server around a :class:`RewardService`.

    Handler threads are joined on :meth:`server_close` (``block_on_close``), so a graceful stop waits
    for in-flight requests; idle keep-alive connections close after ``idle_timeout_s``.
    """

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        service: RewardService,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        idle_timeout_s: float = 5.0,
    ) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s
        self.stopping = False
        self.routes = {"/score": service.score, "/get_reward": service.get_reward}
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start_background(self) -> threading.Thread:
        """Serve on a daemon thread (tests, benchmarks); stop with :meth:`stop`."""
        thread = threading.Thread(target=self.serve_forever, name="polar-http", daemon=True)
        thread.start()
        return thread

    def request_stop(self) -> None:
        """Ask the serving loop to end, without waiting for it: safe on the serving thread itself (a
        signal handler), where :meth:`stop` would wait for its own loop forever."""
        self.stopping = True
        # shutdown() blocks until serve_forever has left its loop: call it from another thread.
        threading.Thread(target=self.shutdown, name="polar-http-stop", daemon=True).start()

    def stop(self) -> None:
        """Graceful stop: no new connections, finish in-flight requests, drain the batcher.

        Call it from any thread but the serving one while the server runs, or on any thread once
        ``serve_forever`` has returned (then ``shutdown()`` returns at once): the one shutdown path.
        """
        self.stopping = True
        self.shutdown()  # returns once serve_forever has left its loop
        self.server_close()  # closes the socket and joins handler threads
        self.service.batcher.close()
        log.info("reward server stopped after %d requests", self.service.requests_served)


def serve_until_signal(server: PolarRewardServer) -> None:
    """Run ``server`` on this (main) thread until SIGTERM or SIGINT, then stop it gracefully."""

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        server.request_stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info(
            "serving %s on %s (POST /score, POST /get_reward, GET /health)",
            server.service.scorer.name,
            server.url,
        )
        server.serve_forever()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.stop()  # serve_forever has returned, so its shutdown() does not wait


def build_server(
    scorer: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    on_prompt_mismatch: str = "error",
    idle_timeout_s: float = 5.0,
    chat_templates: list[ChatTemplate] | None = None,
    reference_free: bool = False,
    request_timeout_s: float = 300.0,
) -> PolarRewardServer:
    """A bound (not yet serving) server for ``scorer`` with its dynamic batcher; port 0 picks a free one.

    ``chat_templates`` are tried before the built-in ChatML and Llama-3 ones on ``/get_reward`` texts;
    ``reference_free`` scores empty labels against an empty reference instead of refusing them.
    """
    batcher = DynamicBatcher(scorer.forward_sequences, max_batch=max_batch, max_wait_ms=max_wait_ms)
    service = RewardService(
        scorer,
        batcher,
        on_prompt_mismatch=on_prompt_mismatch,
        request_timeout_s=request_timeout_s,
        rollout_parser=RolloutParser(chat_templates),
        reference_free=reference_free,
    )
    try:
        return PolarRewardServer(service, host, port, max_body_bytes, idle_timeout_s)
    except OSError:
        batcher.close()
        raise
