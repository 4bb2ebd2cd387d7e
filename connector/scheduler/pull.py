"""Pulling a partner's MISP instance (Connect2Trust) through PyMISP's restSearch.

Each pull asks for the events changed since the last successful pull began (less `overlap`:
clocks differ, and re-ingesting an event changes nothing), the first one for `first_pull`
back. The events are written to the partner's spool folder for `misp-event` as one JSON-lines
file (`pulled-<time>.jsonl`, written as `.part` and renamed) and ingested from there like any
delivered file, so what was pulled is kept in done/ (or failed/) with its run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from connector.config import MispPull, PartnerConfig
from connector.logs import redact

MISP_FORMAT = "misp-event"


class PullError(Exception):
    """The pull could not be made (no key, the instance refused or did not answer)."""


def events_since(partner: PartnerConfig, since: float) -> list[dict[str, Any]]:
    """The partner's MISP events changed since `since` (Unix time)."""
    from pymisp.exceptions import PyMISPError

    from connector.adapters.misp import pull_events

    pull = partner.misp_pull
    assert pull is not None
    key = os.environ.get(pull.key_env)
    if not key:
        raise PullError(f"environment variable {pull.key_env} (the MISP API key of {partner.id}) is not set")
    redact(key)
    search: dict[str, Any] = {"timestamp": int(since), "published": pull.published}
    if pull.tags:
        search["tags"] = list(pull.tags)
    verify: bool | str = str(pull.ca_bundle) if pull.ca_bundle else pull.verify_tls
    try:
        return list(pull_events(pull.url, key, verify=verify, **search))
    except (PyMISPError, OSError, ValueError) as exc:
        raise PullError(f"{partner.id}: pulling {pull.url} failed: {exc}") from None
    except Exception as exc:  # requests' errors, PyMISP's own on an odd answer
        raise PullError(f"{partner.id}: pulling {pull.url} failed: {type(exc).__name__}: {exc}") from None


def since(pull: MispPull, last_started: float | None, now: float) -> float:
    """Where this pull starts: the last successful pull's start less the overlap, or the first
    pull's reach."""
    if last_started is None:
        return now - pull.first_pull
    return last_started - pull.overlap


def write_events(folder: Path, events: Iterable[dict[str, Any]], name: str) -> Path:
    """The events as one JSON-lines file in `folder`, whole or not at all (`.part`, renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    partial = folder / f".{name}.part"
    with partial.open("wb") as fh:
        for event in events:
            fh.write(orjson.dumps(event) + b"\n")
    os.replace(partial, target)
    return target
