"""TAXII 2.1 server: one read collection per recipient, readable only by that recipient.

`create_app` is imported when first asked for, not with the package: `meldpunt serve` sets up
prometheus-client's multiprocess mode (an environment variable it reads on import) before the
application, and with it prometheus-client, is imported (taxii_server/server.py)."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from taxii_server.app import create_app

        return create_app
    raise AttributeError(f"module 'taxii_server' has no attribute {name!r}")
