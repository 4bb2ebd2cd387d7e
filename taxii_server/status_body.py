"""The status resource of an inbox POST (TAXII 2.1 section 4.3.1), bounded whatever was posted.

Every object accepted is listed (there are at most `server.max_objects_per_post`). Failures are
summarised: objects refused for the same reason (the same message once each object's own id is
taken out of it) are one entry, naming how many and the first of their positions, and the list
ends, with a count of what it leaves out, once it reaches FAILURES_MAX_BYTES. Before, each
failure was an entry with the validator's whole message: 10 MB of `[0,0,...]` made a 644 MB
status resource, stored and served.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from connector.submission import Outcome, SubmissionResult

MESSAGE_MAX = 1000  # characters of one failure's message, the summary included
INDEXES_SHOWN = 20  # positions named in a summary of failures with one message
FAILURES_MAX_BYTES = 1_000_000  # of the failure list as JSON


def status_body(result: SubmissionResult, request_timestamp: str) -> dict[str, Any]:
    successes = [{"id": o.id, "version": o.version or ""} for o in result.outcomes if o.ok]
    failed = [o for o in result.outcomes if not o.ok]
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "status": "complete",
        "request_timestamp": request_timestamp,
        "total_count": len(result.outcomes),
        "success_count": len(successes),
        "failure_count": len(failed),
        "pending_count": 0,
    }
    if successes:
        body["successes"] = successes
    if failed:
        body["failures"] = failure_details(failed)
    return body


def failure_details(failed: list[Outcome]) -> list[dict[str, str]]:
    """One entry per distinct reason, in the order of first occurrence, within the byte cap."""
    groups: dict[str, list[Outcome]] = {}
    for outcome in failed:
        message = outcome.message or ""
        key = message.replace(outcome.id, "\x00") if outcome.id else message
        groups.setdefault(key, []).append(outcome)
    details: list[dict[str, str]] = []
    size = 0
    left_out: list[Outcome] = []
    for members in groups.values():
        if left_out:
            left_out += members
            continue
        first = members[0]
        detail = {"id": _ref(first), "version": first.version or "", "message": _message(members)}
        cost = len(orjson.dumps(detail)) + 1
        if size + cost > FAILURES_MAX_BYTES:
            left_out += members
            continue
        size += cost
        details.append(detail)
    if left_out:
        details.append(
            {
                "id": _ref(left_out[0]),
                "version": left_out[0].version or "",
                "message": (
                    f"{len(left_out)} further failures are not listed (from objects[{left_out[0].index}] "
                    f"on): a status resource lists failures up to {FAILURES_MAX_BYTES} bytes"
                ),
            }
        )
    return details


def _ref(outcome: Outcome) -> str:
    return outcome.id or f"objects[{outcome.index}]"


def _message(members: list[Outcome]) -> str:
    message = members[0].message or ""
    if len(members) == 1:
        return _cut(message, MESSAGE_MAX)
    shown = ", ".join(f"objects[{o.index}]" for o in members[:INDEXES_SHOWN])
    more = ", ..." if len(members) > INDEXES_SHOWN else ""
    suffix = f" [the same for {len(members)} objects: {shown}{more}]"
    return _cut(message, MESSAGE_MAX - len(suffix)) + suffix


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 11, 0)] + " ... (cut)"
