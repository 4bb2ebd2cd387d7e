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

from typing import Any

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol

from connector.config import Config
from taxii_server.media import MEDIA_TYPE

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
    }
