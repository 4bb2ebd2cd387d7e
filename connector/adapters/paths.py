"""Values at dotted paths in a record (`info.classification.cve-id`): the one way adapters,
mapping rules and the X-ARF table read a record, so they agree on what "absent" means."""

from __future__ import annotations

from typing import Any

MISSING: Any = object()  # no such path in the record (unlike a present None or "")


def lookup(data: Any, path: str) -> Any:
    """The value at `path`, or MISSING. A flat column name, the common case in CSV feeds, is
    answered by one dict access."""
    if "." not in path:
        return data.get(path, MISSING) if isinstance(data, dict) else MISSING
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node
