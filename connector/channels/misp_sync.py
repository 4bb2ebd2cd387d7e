"""Pushing the outbox to recipients' MISP instances through PyMISP.

Each due outbox entry is built into its event; when the content equals what the MISP last
accepted, nothing is sent (no timestamp churn). Otherwise the event is added (new) or edited
(exists), published if configured. Connection errors, 5xx and 429 are retried with exponential
back-off; after `max_attempts`, or on an error MISP gives for the content itself (4xx), the
entry is marked failed with MISP's message. A crash mid-sync leaves entries pending.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from pymisp import PyMISP
from pymisp.exceptions import MISPServerError, PyMISPError

from connector import feedback
from connector.collections import recipient_collection_id
from connector.config import Config, MispChannel
from connector.logs import redact
from connector.render.misp import build_event
from connector.store import Store
from connector.store.times import now_us

log = logging.getLogger("meldpunt.misp")

BACKOFF_BASE_S = 30.0
BACKOFF_MAX_S = 6 * 3600.0
ClientFactory = Callable[[str, MispChannel], Any]


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class Retryable(Exception):
    """The MISP could not take it now (down, overloaded, rate limiting): try again later."""


class Unreachable(Retryable):
    """The MISP did not answer at all (refused, timed out): its other entries wait too."""


class Refused(Exception):
    """The MISP refused the content itself: retrying the same will not help."""


@dataclass
class SyncSummary:
    counts: Counter[str] = field(default_factory=Counter)
    per_recipient: dict[str, Counter[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # MISP sightings pulled back: what the recipients' analysts said (seen, false positive).
    feedback: Counter[str] = field(default_factory=Counter)

    def add(self, recipient: str, outcome: str) -> None:
        self.counts[outcome] += 1
        self.per_recipient.setdefault(recipient, Counter())[outcome] += 1


def default_client(recipient: str, channel: MispChannel) -> PyMISP:
    key = os.environ.get(channel.key_env or "")
    if not key:
        # Named only when it reads as a variable name: an API key pasted into key_env by
        # mistake (mixed case) must not go on into last_error, the output and the logs.
        name = channel.key_env if _ENV_NAME.fullmatch(channel.key_env or "") else "named by misp.key_env"
        raise Refused(f"environment variable {name} (the MISP API key of {recipient}) is not set")
    redact(key)  # PyMISP logs its request headers at debug level, this key among them
    ssl: bool | str = str(channel.ca_bundle) if channel.ca_bundle else channel.verify_tls
    return PyMISP(channel.url or "", key, ssl=ssl, timeout=(10, 120), tool="meldpunt-connector")


def backoff_seconds(attempts: int) -> float:
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))


class MispSync:
    def __init__(self, config: Config, store: Store, client_factory: ClientFactory = default_client) -> None:
        self.config = config
        self.store = store
        self.client_factory = client_factory
        self._clients: dict[str, Any] = {}
        self._groups: dict[str, int] = {}
        # Recipients whose MISP did not answer in this run, with why. Each try costs the
        # connect or read timeout; their other entries are deferred without one.
        self._unreachable: dict[str, str] = {}

    def due(self, recipient: str | None = None, *, include_later: bool = False) -> list[dict[str, Any]]:
        return self.store.misp_due(recipient, include_later)

    def run(
        self,
        recipient: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        include_later: bool = False,
    ) -> SyncSummary:
        summary = SyncSummary()
        entries = self.due(recipient, include_later=include_later)
        for done, entry in enumerate(entries, start=1):
            with self._claimed(entry, include_later) as current:
                if current is not None:
                    self._deliver(current, summary)
            if progress:
                progress(done, len(entries))
        self.pull_sightings(summary, recipient)
        return summary

    def pull_sightings(self, summary: SyncSummary, recipient: str | None = None) -> None:
        """MISP sightings on the attributes pushed come back as feedback: type 0 (seen) is an
        acknowledgement, type 1 a false positive (type 2, expiration, says nothing of it). Each
        sighting is recorded once, by its UUID."""
        for rid, channel in sorted(self._channels().items()):
            troubled = summary.per_recipient.get(rid, {})
            if recipient not in (None, rid) or rid in self._unreachable or troubled.get("retry-later"):
                continue  # a MISP that could not take the pushes just now is not asked again
            for event_uuid, label in self.store.misp_events(rid):
                try:
                    self._pull_event(rid, channel, event_uuid, label, summary)
                except (Retryable, Refused, requests.RequestException, MISPServerError, PyMISPError) as exc:
                    summary.errors.append(f"{rid} {event_uuid}: sightings not read: {exc}")
                    log.warning(
                        "misp sightings not read",
                        extra={"recipient": rid, "misp_event": event_uuid, "error": str(exc)},
                    )
                    break

    def pushing(self) -> list[str]:
        """The recipients whose events are pushed to a MISP of their own."""
        return sorted(self._channels())

    def _channels(self) -> dict[str, MispChannel]:
        return {r.id: r.misp for r in self.config.recipients if r.misp is not None and r.misp.url}

    def _pull_event(
        self, rid: str, channel: MispChannel, event_uuid: str, label: str, summary: SyncSummary
    ) -> None:
        client = self._client(rid, channel)
        found = client.get_event(event_uuid, pythonify=False)
        if not isinstance(found, dict) or "Event" not in found:
            return  # not (or no longer) on the MISP: nothing to read
        sightings = client.direct_call(f"sightings/index/{found['Event']['id']}")
        if not isinstance(sightings, list) or not sightings:
            return
        built = build_event(self.config, self.store, rid, event_uuid, label, channel, None)
        for sighting in sightings:
            outcome = feedback.from_misp_sighting(self.store, rid, built, sighting)
            if outcome:
                summary.feedback[outcome] += 1

    def _claimed(self, entry: dict[str, Any], include_later: bool) -> Any:
        """The entry as it is now, while this sync alone delivers it (None: another sync has it;
        see connector/store/outbox.py)."""
        claim = self.store.misp_claimed(entry, include_later)
        return _Logged(claim, entry)

    def _deliver(self, entry: dict[str, Any], summary: SyncSummary) -> None:
        rid, event_uuid = entry["recipient"], entry["event_uuid"]
        try:
            channel = self.config.recipient(rid).misp
        except KeyError:
            # Removed from the configuration with entries still queued: fail them visibly (a
            # `misp retry` after adding it back sends them) instead of stopping the whole sync.
            message = f"recipient {rid!r} is no longer in the configuration"
            self._mark(entry, status="failed", attempts=entry["attempts"], error=message)
            summary.add(rid, "failed")
            summary.errors.append(f"{rid} {event_uuid}: {message}")
            log.error(
                "misp delivery failed", extra={"recipient": rid, "misp_event": event_uuid, "error": message}
            )
            return
        if channel is None or not channel.url:
            self._mark(entry, status="done")  # feed-only: the recipient pulls
            summary.add(rid, "feed-only")
            return
        try:
            built = build_event(
                self.config,
                self.store,
                rid,
                event_uuid,
                entry["group_label"],
                channel,
                self._sharing_group_id(rid, channel),
            )
            if built.content_hash == entry["pushed_hash"]:
                self._mark(entry, status="done")
                summary.add(rid, "unchanged")
                return
            if not built.versions and entry["pushed_hash"] is None:
                # Every notification of it was deleted from the collection before it was ever
                # pushed: an empty event would only clutter the recipient's MISP.
                self._mark(entry, status="done")
                summary.add(rid, "empty")
                return
            client = self._client(rid, channel)
            outcome = push_event(client, built.event, publish=channel.publish)
        except Retryable as exc:
            if isinstance(exc, Unreachable):
                self._unreachable[rid] = str(exc)
            attempts = entry["attempts"] + 1
            if attempts >= channel.max_attempts:
                self._mark(entry, status="failed", attempts=attempts, error=str(exc))
                summary.add(rid, "failed")
                summary.errors.append(f"{rid} {event_uuid}: {exc}")
            else:
                delay = backoff_seconds(attempts)
                self._mark(
                    entry,
                    status="pending",
                    attempts=attempts,
                    error=str(exc),
                    next_attempt=now_us() + int(delay * 1_000_000),
                )
                summary.add(rid, "retry-later")
            log.warning(
                "misp push deferred", extra={"recipient": rid, "misp_event": event_uuid, "error": str(exc)}
            )
            return
        except Exception as exc:
            message = str(exc) if isinstance(exc, Refused) else f"{type(exc).__name__}: {str(exc)[:300]}"
            self._mark(entry, status="failed", attempts=entry["attempts"] + 1, error=message)
            summary.add(rid, "failed")
            summary.errors.append(f"{rid} {event_uuid}: {message}")
            log.error(
                "misp delivery failed", extra={"recipient": rid, "misp_event": event_uuid, "error": message}
            )
            return
        self._mark(entry, status="done", pushed_hash=built.content_hash)
        # The recipient's MISP took the event: its notifications reached the recipient.
        self.store.mark_delivered(
            recipient_collection_id(rid), list(built.versions.items()), source="misp", actor=f"MISP of {rid}"
        )
        summary.add(rid, outcome)

    def _sharing_group_id(self, rid: str, channel: MispChannel) -> int | None:
        """The configured sharing group's id: given as a number, or looked up (once) by name or
        UUID among the groups the MISP lets this key use."""
        if channel.distribution != "sharing-group" or channel.sharing_group is None:
            return None
        wanted = channel.sharing_group
        if wanted.isdigit():
            return int(wanted)
        if rid not in self._groups:
            try:
                groups = self._client(rid, channel).sharing_groups(pythonify=True)
            except (requests.RequestException, MISPServerError) as exc:
                raise Retryable(f"cannot list sharing groups: {exc}") from None
            if isinstance(groups, dict):
                raise Refused(f"cannot list sharing groups: {str(groups)[:300]}")
            match = [g for g in groups if wanted in (str(g.get("name")), str(g.get("uuid")))]
            if len(match) != 1:
                raise Refused(f"sharing group {wanted!r}: {len(match)} groups with that name or UUID")
            self._groups[rid] = int(match[0].id)
        return self._groups[rid]

    def _client(self, rid: str, channel: MispChannel) -> Any:
        if rid in self._unreachable:
            raise Unreachable(self._unreachable[rid])
        if rid not in self._clients:
            try:
                self._clients[rid] = self.client_factory(rid, channel)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise Unreachable(f"cannot connect to {channel.url}: {exc}") from None
            except (requests.RequestException, MISPServerError, PyMISPError) as exc:
                if isinstance(exc.__cause__ or exc.__context__, requests.ConnectionError | requests.Timeout):
                    raise Unreachable(f"cannot connect to {channel.url}: {exc}") from None
                raise Retryable(f"cannot connect to {channel.url}: {exc}") from None
        return self._clients[rid]

    def _mark(
        self,
        entry: dict[str, Any],
        *,
        status: str,
        attempts: int | None = None,
        error: str | None = None,
        next_attempt: int | None = None,
        pushed_hash: str | None = None,
    ) -> None:
        values: dict[str, Any] = {"status": status, "last_error": error}
        if attempts is not None:
            values["attempts"] = attempts
        if next_attempt is not None:
            values["next_attempt"] = next_attempt
        if pushed_hash is not None:
            values["pushed_hash"] = pushed_hash
            values["attempts"] = 0
        self.store.misp_mark(entry, values)

    def retry_failed(self, recipient: str | None = None) -> int:
        """Put failed entries back in the queue (after an outage longer than the retries)."""
        return self.store.misp_retry_failed(recipient)

    def status(self) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for rid, status, next_attempt, error in self.store.misp_entries():
            entry = out.setdefault(
                rid,
                {
                    "recipient": rid,
                    "pending": 0,
                    "done": 0,
                    "failed": 0,
                    "next_attempt": None,
                    "last_error": None,
                },
            )
            entry[status] += 1
            if status == "pending" and (
                entry["next_attempt"] is None or next_attempt < entry["next_attempt"]
            ):
                entry["next_attempt"] = next_attempt
            if error and status != "done":
                entry["last_error"] = error
        return [out[k] for k in sorted(out)]


class _Logged:
    """A claim that logs when another sync holds the entry."""

    def __init__(self, claim: Any, entry: dict[str, Any]) -> None:
        self._claim = claim
        self._entry = entry

    def __enter__(self) -> dict[str, Any] | None:
        current: dict[str, Any] | None = self._claim.__enter__()
        if current is None:
            log.info(
                "misp entry being delivered by another sync",
                extra={"recipient": self._entry["recipient"], "misp_event": self._entry["event_uuid"]},
            )
        return current

    def __exit__(self, *exc_info: Any) -> Any:
        return self._claim.__exit__(*exc_info)


def push_event(client: Any, event: Any, *, publish: bool) -> str:
    """Add or edit one event; returns 'added', 'edited' or 'already-current'."""
    try:
        exists = client.event_exists(event.uuid)
        event.timestamp = int(time.time())
        if exists:
            response = client.update_event(event, event_id=event.uuid)
            outcome = "edited"
        else:
            response = client.add_event(event)
            outcome = "added"
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise Unreachable(f"connection failed: {exc}") from None
    except MISPServerError as exc:
        raise Retryable(f"server error: {str(exc)[:300]}") from None
    errors = response.get("errors") if isinstance(response, dict) else None
    if errors:
        code, detail = errors if isinstance(errors, tuple | list) and len(errors) == 2 else (0, errors)
        text = str(detail)[:500]
        if code == 429:
            raise Retryable(f"rate limited: {text}")
        if "newer" in text.lower() or "not newer" in text.lower():
            return "already-current"  # MISP holds this version or a later one
        if code == 404 and outcome == "added":
            return _edit_after_race(client, event, publish)
        raise Refused(f"MISP answered {code}: {text}")
    if publish:
        client.publish(event.uuid)
    return outcome


def _edit_after_race(client: Any, event: Any, publish: bool) -> str:
    """The event appeared between the existence check and the add (another sync): edit it."""
    response = client.update_event(event, event_id=event.uuid)
    if isinstance(response, dict) and response.get("errors"):
        raise Refused(f"MISP answered {response['errors']}")
    if publish:
        client.publish(event.uuid)
    return "edited"


def recipients_without_key(config: Config, recipient: str | None) -> dict[str, str]:
    """Recipients (all, or the one asked for) that push to a MISP whose API key variable is
    not set, each with the variable as it may be named.

    MispSync marks an entry it has no key for `failed`, and failed entries wait for
    `meldpunt misp retry`: set the key afterwards and the next sync said "nothing due". A key
    that is not there is the operator's to fix, not the event's fault, so the sync leaves
    those recipients' entries queued and says why. A variable name that does not look like one
    (an API key pasted into key_env) is not printed."""
    missing = {}
    for r in config.recipients:
        channel = r.misp
        if recipient not in (None, r.id) or channel is None or not channel.url:
            continue
        if not os.environ.get(channel.key_env or ""):
            name = channel.key_env or ""
            shown = (
                f"environment variable {name}"
                if _ENV_NAME.fullmatch(name)
                else "the variable named by misp.key_env"
            )
            missing[r.id] = shown
    return missing
