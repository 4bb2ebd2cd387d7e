"""Structured logs: one JSON object per line, with the event's fields, never a secret."""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


_OWN_KEYS = {"ts", "level", "logger", "event", "exception"}
_SECRETS: set[str] = set()
REDACTED = "[redacted]"


def redact(secret: str | None) -> None:
    """Never let `secret` reach the log output, whoever logs it.

    Libraries log what they send: PyMISP writes every request's headers, the API key among
    them, at debug level. The code that takes a secret out of the environment registers it
    here, and every line is scrubbed of it as written (at any level, in any field).
    """
    if secret and len(secret) >= 8:  # shorter values would redact ordinary words
        _SECRETS.add(secret)
        _SECRETS.add(orjson.dumps(secret).decode()[1:-1])  # as it appears inside a JSON string


def _scrub(line: str) -> str:
    for secret in _SECRETS:
        if secret in line:
            line = line.replace(secret, REDACTED)
    return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _scrub(self._format(record))

    def _format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                # An extra named like one of the line's own keys must not replace it (an
                # `event` extra once replaced what happened with a MISP event's UUID).
                event[f"{key}_" if key in _OWN_KEYS else key] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(event, default=str).decode()


LEVELS = ("debug", "info", "warning", "error", "critical")


class LogLevelError(ValueError):
    """The log level given (option or environment) is not one of LEVELS."""


def setup_logging(level: str | None = None) -> None:
    """JSON lines on stderr at `level`, else $MELDPUNT_LOG_LEVEL, else warning.

    An unknown level is refused with a message naming where it came from: logging's own
    ValueError would otherwise surface as a traceback before any command runs.
    """
    source = "--log-level" if level else "MELDPUNT_LOG_LEVEL"
    name = (level or os.environ.get("MELDPUNT_LOG_LEVEL") or "warning").lower()
    if name not in LEVELS:
        raise LogLevelError(f"{source}: unknown log level {name!r} (one of {', '.join(LEVELS)})")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(name.upper())
