"""What a request parameter may hold: text that both store engines can compare.

PostgreSQL text cannot hold a NUL character, and psycopg refuses to send one (the request
was a 500 on PostgreSQL and a quiet empty answer on SQLite); a lone surrogate cannot even be
encoded as UTF-8. No stored identifier, type or timestamp holds either, so such a value can
match nothing: the edges refuse it before any query (a filter: 400; an identifier: 404).
"""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: str) -> bool:
    """Whether `value` can be compared with stored text on every engine."""
    return _UNSTORABLE.search(value) is None
