"""Deterministic STIX identifiers.

Cyber-observables follow the specification (section 2.9): UUIDv5 in the SCO namespace over the
canonical JSON of the id-contributing properties, so our ids equal every other conformant
producer's. Everything else uses the project's own namespace over a natural key, so the same
occurrence always gets the same id; the SCO namespace is reserved for SCOs by the spec.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

SCO_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
# The project's namespace: uuid5(NAMESPACE_URL, "https://meldpunt.example/stix").
PROJECT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://meldpunt.example/stix")


def canonical_json(value: Any) -> str:
    """RFC 8785 (JCS) for the value shapes SCO id contributors take: strings, ints, lists."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sco_id(sco_type: str, contributing: dict[str, Any]) -> str:
    present = {k: v for k, v in contributing.items() if v is not None}
    return f"{sco_type}--{uuid.uuid5(SCO_NAMESPACE, canonical_json(present))}"


def project_id(stix_type: str, *key: str | int | None) -> str:
    name = "\x1f".join("" if part is None else str(part) for part in (stix_type, *key))
    return f"{stix_type}--{uuid.uuid5(PROJECT_NAMESPACE, name)}"


def project_uuid(*key: str | int | None) -> uuid.UUID:
    name = "\x1f".join("" if part is None else str(part) for part in key)
    return uuid.uuid5(PROJECT_NAMESPACE, name)


def timestamp(moment: datetime) -> str:
    """STIX timestamp in UTC with millisecond precision, the form every consumer parses."""
    moment = moment.astimezone(UTC)
    return f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
