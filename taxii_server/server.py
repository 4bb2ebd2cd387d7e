"""How uvicorn is to run the TAXII application: the settings `meldpunt serve` passes it.

Two of uvicorn's defaults do not fit this server:

- `proxy_headers` on, trusting 127.0.0.1: any local process could then name itself any
  client address with X-Forwarded-For, and so never reach a login back-off. The application
  decides from `server.trusted_proxies` instead (taxii_server.app.client_address), so
  uvicorn's own handling is off.
- A request head h11 cannot parse, or one that grows past the limit unfinished, is answered
  by uvicorn itself with a text/plain 400. `TaxiiH11Protocol` answers it with a TAXII error
  message: 414 for a request line too long, 431 for too many header bytes, else 400.

What stays text/plain: uvicorn's 503 when `limit_concurrency` is exceeded (not set here), its
500 when the application fails before it could answer at all (the application's own handler
answers every exception it sees with a TAXII error), and anything said by a server other than
uvicorn with this class (httptools, hypercorn) when run by hand.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol

from connector.config import Config
from taxii_server.media import MEDIA_TYPE

log = logging.getLogger("meldpunt.serve")

# What a worker process (several workers) reads its configuration from: the path `meldpunt
# serve` resolved, and the log level it runs at. Workers are new interpreters (spawned), so
# they get the configuration again rather than a copy of the parent's objects.
WORKER_CONFIG_ENV = "MELDPUNT_SERVE_CONFIG"
LOG_LEVEL_ENV = "MELDPUNT_LOG_LEVEL"

_REASONS = {400: b"Bad Request", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class TaxiiH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering requests it cannot hand to the application with
    TAXII error messages instead of text/plain."""

    def send_400_response(self, msg: str) -> None:
        status, title = self._refusal()
        body = orjson.dumps({"title": title, "http_status": str(status), "description": msg})
        headers = [
            (b"content-type", MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=status, headers=headers, reason=_REASONS[status]),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _refusal(self) -> tuple[int, str]:
        """Which limit, if any, the unparsed data has run into: h11 says only that it failed,
        but an unfinished head over the limit is what it refuses for size."""
        pending, _closed = self.conn.trailing_data
        limit = self.config.h11_max_incomplete_event_size
        if limit is None or len(pending) <= limit:
            return 400, "Bad request"
        if b"\n" not in pending:
            return 414, "Request line too long"
        return 431, "Request header fields too large"


def uvicorn_options(config: Config) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config besides the app, host and port."""
    return {
        "http": TaxiiH11Protocol,
        "proxy_headers": False,
        "h11_max_incomplete_event_size": config.server.max_request_head_bytes,
        "log_level": "warning",
        "log_config": None,  # uvicorn's own lines go through our JSON handler too, one line each
        # After SIGTERM: stop accepting, let requests in flight finish this long, then cancel them.
        "timeout_graceful_shutdown": config.server.shutdown_timeout,
    }


def worker_app() -> Any:
    """The application of one worker process (`server.workers` above 1): uvicorn spawns each
    worker as a new interpreter and calls this (import string `taxii_server.server:worker_app`).
    The parent has migrated the store and checked the configuration already."""
    from connector.config import load_config
    from connector.logs import setup_logging
    from connector.store import Store
    from taxii_server.app import create_app

    setup_logging(os.environ.get(LOG_LEVEL_ENV))
    config = load_config(os.environ[WORKER_CONFIG_ENV])
    return create_app(config, Store.open(config.database))


class CannotListen(Exception):
    """The address cannot be listened on (in use, not this host's); logged already."""


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket, bound and listening before any worker starts: connections made
    before a worker is up wait in the backlog instead of being refused, so the startup line is
    true when it is printed. CannotListen (after an error log line) when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by every accepted connection: small answers are not held back for the client's
    # delayed ACK (40 ms each; see tests/conftest.py's start_server).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        log.error(f"cannot listen on {host}:{port}: {reason}", extra={"host": host, "port": port})
        raise CannotListen(reason) from None
    sock.set_inheritable(True)  # the workers get it
    return sock


def _supervisor_class() -> Any:
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        """uvicorn's supervisor of several workers, which on SIGTERM (or Ctrl-C) also closes its
        own copy of the listening socket. The workers close theirs as they stop, but while the
        supervisor held one the kernel kept accepting connections into the backlog that no
        worker would ever answer."""

        def _stop_listening(self) -> None:
            for sock in self.sockets:
                sock.close()

        def handle_term(self) -> None:
            self._stop_listening()
            super().handle_term()

        def handle_int(self) -> None:
            self._stop_listening()
            super().handle_int()

    return Supervisor


class _Stopped:
    """SIGTERM as `meldpunt serve` ends: uvicorn finishes (or, past shutdown_timeout, cancels)
    the requests in flight, then raises the signal again for whatever handler was there before
    it. This is that handler: it notes the signal, and the command then exits 0, as a service
    manager expects of a process it asked to stop."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, _frame: Any) -> None:
        self.signal = signum


def run_server(
    config: Config,
    application: Any,
    *,
    host: str,
    port: int,
    workers: int,
    announce: Callable[[str], None],
    metrics_listener: Callable[[], Callable[[], None] | None] = lambda: None,
) -> int | None:
    """Serve until SIGTERM (or Ctrl-C); returns the signal that stopped a single process (None
    otherwise). `application` is the app (one process) or unused (several: each worker builds
    its own from the configuration). The socket is bound here, before any worker starts, so
    the line saying where it listens is printed once and only once it does listen."""
    import uvicorn

    several = workers > 1
    settings = uvicorn.Config(
        "taxii_server.server:worker_app" if several else application,
        factory=several,
        host=host,
        port=port,
        workers=workers,
        **uvicorn_options(config),
    )
    sock = listen(host, port, settings.backlog)
    where = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"
    processes = f"{workers} worker processes" if several else "1 process"
    announce(f"meldpunt serve: listening on {where} ({processes}, pid {os.getpid()})")
    log.info("listening", extra={"url": where, "workers": workers})
    stopped = _Stopped()
    previous = signal.signal(signal.SIGTERM, stopped)
    stop_metrics = None
    try:
        stop_metrics = metrics_listener()
        if several:
            # SIGTERM (or Ctrl-C): every worker stops gracefully, then the parent returns.
            _supervisor_class()(settings, sockets=[sock]).run()
        else:
            uvicorn.Server(settings).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        if stop_metrics is not None:
            stop_metrics()
        sock.close()
    return stopped.signal
