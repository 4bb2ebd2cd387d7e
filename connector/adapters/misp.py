"""MISP events (Connect2Trust's threat-intelligence platform) -> notifications.

Input (format `misp-event`): a file holding one MISP event (`{"Event": {...}}` or the bare
event), a JSON list of them, a MISP API response (`{"response": [...]}`), or JSON lines with
one event per line. Each event is one record; PyMISP's `MISPEvent.load` parses it, so MISP's
own rules apply, and an event PyMISP refuses is quarantined with PyMISP's message. A JSON
document (single event or list) is read whole; JSON lines are streamed line by line.

Every attribute with a routable value, at top level or inside a MISP object, becomes one
notification:

| MISP type | notification fields |
|---|---|
| `ip-src`, `ip-dst` | ip |
| `ip-src|port`, `ip-dst|port` | ip, port |
| `domain`, `hostname` | hostname |
| `hostname|port` | hostname, port |
| `domain|ip` | hostname, ip (routed by the address) |
| `url` | url, plus its host as hostname (or ip, for an IP literal) to route by (**) |
| `email`, `email-src`, `email-dst`, `email-reply-to` | email (routed by its domain) (*) |

(*) e-mail addresses are personal data: direct owner only, discarded when unrouted, and an
unusable one is reported without its value.
(**) MISP takes a url without a scheme (`www.example.com/path`): it is read as http://, the
scheme a browser assumes, since a STIX url value must be an absolute URI; the value as given is
kept in evidence (`misp_url_as_given`). Only a dotted host name or an address may start one.

Inside a MISP object (`ip-port`, `domain-ip` ...) an address or host name takes the object's
single `dst-port` (and `protocol`) as its port; an `ip-src` does not (its port is the client's).
An object value a notification would take (that `dst-port`, that `protocol`, the object's
`first-seen` attribute when it decides the time) that is present but unusable withholds that
notification: it is not made without the port or with another time (see `_from_object`).

- classification: the attribute's `rsit:<taxonomy>="<type>"` tag, else the event's, else
  `other/undetermined` (evidence `misp_rsit_from` says which). Several rsit tags on one level:
  the first counts. An rsit tag naming no RSIT category quarantines the event.
- identifier: the event's `info` (whitespace collapsed); for `vulnerable/*` the CVE of the
  attribute's object or, when there is exactly one, of the event (also set as vulnerability);
  for `malicious-code/infected-system` the `misp-galaxy:malpedia` family when tagged.
- tlp: the attribute's `tlp:` tag overrides the event's; several on one level: the most
  restrictive; none: the partner's default. A TLP tag parse_tlp does not know (`tlp:ex:chr`,
  `tlp:unclear`) quarantines the event rather than guess a level.
- observed_at: the attribute's first_seen, the object's first_seen (or its `first-seen`
  attribute), the attribute's timestamp (its last change in MISP), else the event's date
  (midnight UTC): the first one present decides. An event without any of these is quarantined.
  A deciding time that is present but unusable (no time, out of range or a placeholder:
  converters.observation_time; or a first_seen PyMISP dropped because it could not parse it)
  is never passed over for the next one: the notification is withheld. The attribute's own
  first_seen or timestamp is that attribute's fault; the object's, or the event's date, is one
  fault naming the notifications it withheld.
- evidence: event and attribute UUIDs, MISP type, category, object name/UUID/relation,
  comments, to_ids, the creating organisation, where classification and TLP came from, and
  per event the count (by type) of attributes that gave no notification (text, hashes,
  vulnerability ids, ports and times used as context ...) and the attributes whose value was
  unusable (UUID, type and reason; e-mail values withheld). Such attributes are left out; the
  event is skipped when none is routable, and quarantined when routable ones exist but none is
  usable. Deleted (soft-deleted) attributes are ignored.

Beside an event's notifications (`MispAdapter.outcome`), each unusable attribute is a fault:
the ingest quarantines it as a run row of its own (the event's line; reason: event UUID,
attribute UUID and type, never the value) and counts it as `attributes_quarantined`. So is an
unusable object value a notification would take (its reason also names the object and the
attributes whose notifications it withheld); one such value is one fault however many
notifications it withholds. The attributes that are not routable by design (the types above
aside) are counted as `attributes_skipped`. An event that is quarantined or skipped as a whole
counts only as that.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any, BinaryIO

import orjson
from pymisp import MISPAttribute, MISPEvent, MISPObject, PyMISP

from connector.adapters.converters import (
    CONVERSION_ERRORS,
    domain,
    email,
    ip_address,
    observation_time,
    port,
    timestamp,
    url_or_schemeless,
)
from connector.adapters.engine import RowRejected, RowSkipped
from connector.adapters.readers import RawRecord, Row, RowError, read_jsonl
from connector.adapters.registry import AdapterContext, AdapterInfo, RecordOutcome, register
from connector.normalize import is_ip, url_host
from connector.notification import Classification, Notification, SourceRef
from connector.rsit import RSIT
from connector.tlp import TLP_LEVELS, parse_tlp

log = logging.getLogger("meldpunt.adapters.misp")

FORMAT = "misp-event"
DEFAULT_CLASSIFICATION = ("other", "undetermined")
RAW_KEEP = 4000  # enough for the quarantine excerpt; a large event is not kept whole
UNUSABLE_LISTED = 20  # unusable attributes named in evidence and quarantine reasons (all are counted)
MESSAGE_MAX = 400  # PyMISP's messages can list every MISP type: keep the start

EMAIL_TYPES = frozenset({"email", "email-src", "email-dst", "email-reply-to"})
ROUTABLE_TYPES = frozenset(
    {"ip-src", "ip-dst", "ip-src|port", "ip-dst|port", "domain", "hostname", "hostname|port"}
    | {"domain|ip", "url"}
    | EMAIL_TYPES
)
# Types that take the port of their MISP object (an ip-src's port is the client's own).
_TAKES_OBJECT_PORT = frozenset({"ip-dst", "domain", "hostname", "domain|ip"})
_RSIT_TAG = re.compile(r'^rsit:([a-z0-9-]+)="([a-z0-9-]+)"$')
_MALPEDIA_TAG = re.compile(r'^misp-galaxy:malpedia="(.+)"$')
_CVE = re.compile(r"^CVE-\d{4}-\d{4,}$")
_PROTOCOL = re.compile(r"^[a-z0-9-]{1,16}$")
# What a quarantine reason may quote of an attribute's identity (PyMISP checks neither shape).
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_OBJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


# --- reading ---------------------------------------------------------------------------------


def read_events(stream: BinaryIO) -> Iterator[Row]:
    """The events of a file: a JSON document (event, list, API response) or JSON lines."""
    first = _first_line(stream)
    stream.seek(0)
    if not first:
        return
    if first.startswith(b"{") and _is_json_object(first):
        yield from _unwrap(read_jsonl(stream))  # one event per line (or a one-line document)
        return
    content = stream.read()
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        if first in (b"{", b"["):  # a pretty-printed document that is broken: one fault, not one per line
            excerpt = content[:RAW_KEEP].decode("utf-8", errors="replace")
            yield RowError(1, f"not valid JSON: {exc}", excerpt)
            return
        stream.seek(0)
        yield from _unwrap(read_jsonl(stream))  # JSON lines whose first line is faulty
        return
    yield from _document_events(document, content)


def _unwrap(rows: Iterator[Row]) -> Iterator[Row]:
    """A line holding a MISP API response (`{"response": [...]}`) gives each of its events."""
    for row in rows:
        if isinstance(row, RawRecord) and isinstance(row.data.get("response"), list):
            yield from _events(row.data["response"], line=row.line)
        else:
            yield row


def _first_line(stream: BinaryIO) -> bytes:
    for raw in stream:
        line = raw.strip()
        if line:
            return line
    return b""


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def _document_events(document: Any, content: bytes) -> Iterator[Row]:
    """A whole JSON document: `line` is the event's position in a list (1 for a single event)."""
    if isinstance(document, dict) and isinstance(document.get("response"), list):
        items: list[Any] = document["response"]
    elif isinstance(document, dict):
        yield RawRecord(1, document, content[:RAW_KEEP].decode("utf-8", errors="replace"))
        return
    elif isinstance(document, list):
        items = document
    else:
        yield RowError(1, "expected a MISP event, a list of events or JSON lines", "")
        return
    yield from _events(items)


def _events(items: list[Any], line: int | None = None) -> Iterator[Row]:
    """Events of a list: numbered by position, or all by the one line that held them."""
    for position, item in enumerate(items, start=1):
        number = position if line is None else line
        try:
            raw = orjson.dumps(item)[:RAW_KEEP].decode("utf-8", errors="replace")
        except orjson.JSONEncodeError:  # nested deeper than orjson writes: PyMISP's load says so
            raw = ""
        if isinstance(item, dict):
            yield RawRecord(number, item, raw)
        else:
            yield RowError(number, "not a JSON object (expected a MISP event)", raw)


def load_event(data: dict[str, Any]) -> MISPEvent:
    """The event as PyMISP reads it; RowRejected with PyMISP's message when it refuses it."""
    body = data.get("Event", data)
    if not isinstance(body, dict):
        raise RowRejected("not a valid MISP event: `Event` is not an object")
    if not body.get("uuid"):
        raise RowRejected("MISP event without a uuid: its attributes could not be traced")
    event = MISPEvent()
    try:
        # A copy: PyMISP pops keys from the dicts it is given.
        event.load(orjson.loads(orjson.dumps(data)))
    except Exception as exc:  # PyMISP raises NewEventError, NewAttributeError, KeyError, TypeError ...
        message = f"{type(exc).__name__}: {exc}"
        if len(message) > MESSAGE_MAX:
            message = message[:MESSAGE_MAX] + " ..."
        raise RowRejected(f"not a valid MISP event (PyMISP: {message})") from None
    return event


# --- tags ------------------------------------------------------------------------------------


def _tag_names(entity: MISPEvent | MISPAttribute) -> list[str]:
    tags = getattr(entity, "tags", None) or []
    return [name.strip() for t in tags if isinstance(name := getattr(t, "name", None), str)]


def tlp_of(tags: Iterable[str], where: str) -> str | None:
    """The most restrictive TLP among the tags; None without one; RowRejected for an unknown one."""
    levels = []
    for tag in tags:
        if tag.lower().startswith("tlp:"):
            try:
                levels.append(parse_tlp(tag))
            except ValueError:
                raise RowRejected(f"{where}: TLP tag {tag!r} is not a TLP 2.0 level") from None
    return max(levels, key=TLP_LEVELS.__getitem__) if levels else None


def rsit_of(tags: Iterable[str], where: str) -> tuple[tuple[str, str] | None, list[str]]:
    """(the first rsit tag's taxonomy and type, every rsit tag); RowRejected for an unknown one."""
    found: list[tuple[str, str]] = []
    names: list[str] = []
    for tag in tags:
        if not tag.lower().startswith("rsit:"):
            continue
        match = _RSIT_TAG.match(tag.lower())
        if not match or match.group(2) not in RSIT.get(match.group(1), ()):
            raise RowRejected(f'{where}: {tag!r} is not an RSIT category (rsit:<taxonomy>="<type>")')
        found.append((match.group(1), match.group(2)))
        names.append(tag)
    return (found[0] if found else None), names


def _malpedia_family(tags: Iterable[str]) -> str | None:
    for tag in tags:
        match = _MALPEDIA_TAG.match(tag)
        if match:
            return match.group(1)
    return None


# --- values ----------------------------------------------------------------------------------


def routable_fields(misp_type: str, value: Any) -> dict[str, Any]:
    """The notification fields of a routable attribute value; ValueError when it is unusable."""
    text = str(value).strip()
    if misp_type in ("ip-src", "ip-dst"):
        return {"ip": ip_address(text)}
    if misp_type in ("ip-src|port", "ip-dst|port"):
        address, _, number = text.rpartition("|")
        return {"ip": ip_address(address), "port": port(number)}
    if misp_type in ("domain", "hostname"):
        return {"hostname": domain(text)}
    if misp_type == "hostname|port":
        host, _, number = text.rpartition("|")
        return {"hostname": domain(host), "port": port(number)}
    if misp_type == "domain|ip":
        host, _, address = text.partition("|")
        return {"hostname": domain(host), "ip": ip_address(address)}
    if misp_type == "url":
        clean = url_or_schemeless(text)  # MISP takes `www.example.com/path` as a url
        host = url_host(clean) or ""
        return {
            "url": clean,
            **({"ip": ip_address(host.strip("[]"))} if is_ip(host) else {"hostname": domain(host)}),
        }
    if misp_type in EMAIL_TYPES:
        return {"email": email(text)}  # the router routes an address by its domain
    raise ValueError(f"MISP type {misp_type} is not routable")


def _as_utc(value: Any) -> datetime:
    """A time PyMISP parsed (or a `first-seen` attribute's text) as an observation time in
    UTC; ValueError when it is none (out of range, a placeholder, not a time)."""
    if isinstance(value, datetime):
        return observation_time(value)
    if isinstance(value, date):
        return observation_time(datetime.combine(value, time(), UTC))
    return timestamp(value)


# A time the input gave that PyMISP did not keep: it drops a first_seen it cannot parse (an
# epoch number out of range, a text that is no time) with only a log line.
DROPPED: Any = object()


def _dropped_first_seen(data: dict[str, Any], event: MISPEvent) -> set[int]:
    """The attributes and objects (by id()) whose input has a first_seen that PyMISP dropped.

    PyMISP loads an event's attributes and objects in the input's order, so they are paired by
    position; a list whose length PyMISP changed is paired by UUID instead."""
    body = data.get("Event", data)
    pairs = _paired(body.get("Attribute"), event.attributes)
    for raw_object, obj in _paired(body.get("Object"), event.objects):
        pairs += [(raw_object, obj), *_paired(raw_object.get("Attribute"), obj.attributes)]
    return {
        id(entity)
        for raw, entity in pairs
        if raw.get("first_seen") not in (None, "") and entity.get("first_seen") is None
    }


def _paired(raw: Any, loaded: list[Any]) -> list[tuple[dict[str, Any], Any]]:
    items = raw if isinstance(raw, list) else []
    if len(items) == len(loaded) and all(isinstance(i, dict) for i in items):
        return list(zip(items, loaded, strict=True))
    by_uuid = {str(i.get("uuid")): i for i in items if isinstance(i, dict) and i.get("uuid")}
    return [(by_uuid[str(e.uuid)], e) for e in loaded if str(getattr(e, "uuid", None)) in by_uuid]


def _holder_key(bad: _Unusable) -> int:
    """What an unusable value's fault is counted by: the attribute holding it, the object (its
    own first_seen), or the event (its date, for every attribute it would date)."""
    if not isinstance(bad, _TimeSource):
        return id(bad)
    if bad.attribute is not None:
        return id(bad.attribute)
    return id(bad.obj)  # id(None) for the event's date: one key for the event


@dataclass(frozen=True)
class _TimeSource:
    """The value that decides a notification's time, and what holds it: the attribute itself
    (its first_seen or timestamp), the object (its first_seen), the object's `first-seen`
    attribute, or the event (its date). An unusable value is the holder's fault."""

    value: Any
    field: str
    attribute: MISPAttribute | None = None  # the attribute, or the object's first-seen attribute
    obj: MISPObject | None = None  # the object, for its own first_seen

    @property
    def own(self) -> bool:
        """Whether the value is one of the notification's attribute's own fields."""
        return self.field in ("first_seen", "timestamp") and self.attribute is not None


# An unusable value other attributes' notifications take: an object's attribute (its dst-port,
# protocol), or a time source (an object's first_seen or first-seen, the event's date).
_Unusable = MISPAttribute | _TimeSource
# What one attribute's notification is made of: it, its object, its fields, its time.
_Found = tuple[MISPAttribute, MISPObject | None, dict[str, Any], datetime]


def _object_attributes(obj: MISPObject, relation: str) -> list[MISPAttribute]:
    return [
        a
        for a in obj.attributes
        if a.get("object_relation") == relation and not a.get("deleted") and a.get("value") not in (None, "")
    ]


def _input_uuids(data: dict[str, Any]) -> set[str]:
    """The attribute and object UUIDs the event itself carries."""
    body = data.get("Event", data)
    found: set[str] = set()
    for obj in body.get("Object") or []:
        if isinstance(obj, dict):
            found.add(str(obj.get("uuid")))
            found.update(str(a.get("uuid")) for a in obj.get("Attribute") or [] if isinstance(a, dict))
    found.update(str(a.get("uuid")) for a in body.get("Attribute") or [] if isinstance(a, dict))
    found.discard("None")
    return found


def _single(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else None


# --- the adapter -----------------------------------------------------------------------------


class MispAdapter:
    """Turns MISP events into notifications, one per routable attribute."""

    def __init__(self, context: AdapterContext) -> None:
        self.context = context

    def rows(self, stream: Any) -> Iterator[Row]:
        return read_events(stream)

    def notifications(self, record: RawRecord) -> list[Notification]:
        return self.outcome(record).notifications

    def outcome(self, record: RawRecord) -> RecordOutcome:
        """The notifications, the unusable attributes' reasons, the count of context attributes."""
        event = load_event(record.data)
        return _EventMapping(event, record, self.context).outcome()


@register(
    FORMAT,
    AdapterInfo(
        "Connect2Trust: MISP events (JSON, JSON lines, PyMISP pull)",
        "json",
        "from each attribute's or the event's `rsit:` tag",
    ),
)
def misp_adapter(context: AdapterContext) -> MispAdapter:
    return MispAdapter(context)


class _EventMapping:
    """One event's attributes as notifications (RowSkipped / RowRejected for the whole event)."""

    def __init__(self, event: MISPEvent, record: RawRecord, context: AdapterContext) -> None:
        self.event = event
        self.record = record
        self.context = context
        self.where = f"MISP event {event.uuid}"
        tags = _tag_names(event)
        self.tags = tags
        self.tlp = tlp_of(tags, self.where)
        self.rsit, self.rsit_tags = rsit_of(tags, self.where)
        self.info = " ".join(str(event.get("info") or "").split())
        self.day = event.get("date")
        self.cves = sorted(
            set(self._cves(self.event.attributes))
            | {c for o in event.objects for c in self._cves(o.attributes)}
        )
        self.given_uuids = _input_uuids(record.data)  # PyMISP invents a random uuid where none was given
        self.dropped = _dropped_first_seen(record.data, event)
        self.without_notification: Counter[str] = Counter()
        self.unusable: list[dict[str, str]] = []
        self.faults: list[str] = []  # one quarantine reason per unusable attribute
        self.not_routable = 0  # attributes that are context, not notifications, by design
        orgc = event.get("Orgc")
        self.org = orgc.get("name") if orgc is not None and hasattr(orgc, "get") else None

    def attributes(self) -> Iterator[tuple[MISPAttribute, MISPObject | None]]:
        for attribute in self.event.attributes:
            yield attribute, None
        for obj in self.event.objects:
            for attribute in obj.attributes:
                yield attribute, obj

    def outcome(self) -> RecordOutcome:
        notifications = self.notifications()
        return RecordOutcome(notifications, self.faults, self.not_routable)

    def notifications(self) -> list[Notification]:
        found: list[_Found] = []
        # An unusable value of an object or the event -> (what holds it, the attributes whose
        # notifications it withholds)
        withheld: dict[int, tuple[_Unusable, MISPObject | None, list[MISPAttribute]]] = {}
        for attribute, obj in self.attributes():
            if attribute.get("deleted"):
                continue
            taken = self._take(attribute, obj)
            if isinstance(taken, list):
                for bad in taken:
                    withheld.setdefault(_holder_key(bad), (bad, obj, []))[2].append(attribute)
            elif taken is not None:
                found.append(taken)
        for bad, obj, held in withheld.values():
            self._withheld_fault(bad, obj, held)
        if not found:
            self._nothing_usable()
        if self.without_notification or self.unusable:
            log.info(
                "MISP attributes without notification",
                extra={
                    "event": self.event.uuid,
                    "by_type": dict(self.without_notification),
                    "unusable": self.unusable,
                },
            )
        return [self.notification(*item) for item in found]

    def _take(self, attribute: MISPAttribute, obj: MISPObject | None) -> _Found | list[_Unusable] | None:
        """One attribute: what its notification is made of; or the unusable values of its
        object or event that withhold it; or None (context, or a fault of its own, recorded)."""
        misp_type = str(attribute.get("type"))
        if misp_type not in ROUTABLE_TYPES:
            self.without_notification[misp_type] += 1
            self.not_routable += 1
            return None
        try:
            fields = routable_fields(misp_type, attribute.value)
        except CONVERSION_ERRORS:
            # Never the value: it may be another recipient's host or hold a password.
            self._attribute_fault(attribute, obj, f"not a usable {misp_type} value (value withheld)")
            return None
        unusable: list[_Unusable] = self._from_object(attribute, obj, fields) if obj is not None else []
        source = self._time_source(attribute, obj)
        observed_at = self._time_of(source)
        if observed_at is None and source.own:
            self._attribute_fault(attribute, obj, f"not a usable {source.field} (value withheld)")
            return None
        if observed_at is None:
            unusable.append(source)
        if unusable:
            self.without_notification[misp_type] += 1
            return unusable
        assert observed_at is not None
        return attribute, obj, fields, observed_at

    def _nothing_usable(self) -> None:
        """No notification of the event: RowRejected when routable attributes were unusable
        (the event is quarantined whole, every one named), else RowSkipped."""
        if self.unusable:
            listed = self.unusable[:UNUSABLE_LISTED]
            reasons = "; ".join(f"{u['uuid']} ({u['type']}): {u['reason']}" for u in listed)
            more = (
                f" (and {len(self.unusable) - len(listed)} more)" if len(self.unusable) > len(listed) else ""
            )
            raise RowRejected(f"{self.where}: no usable routable attribute: {reasons}{more}")
        types = ", ".join(f"{t} x{n}" for t, n in sorted(self.without_notification.items())) or "none"
        raise RowSkipped(f"{self.where}: no routable attribute (attributes: {types})")

    def notification(
        self, attribute: MISPAttribute, obj: MISPObject | None, fields: dict[str, Any], observed_at: datetime
    ) -> Notification:
        misp_type = str(attribute.type)
        where = f"{self.where} attribute {attribute.uuid}"
        attribute_tags = _tag_names(attribute)
        attribute_tlp = tlp_of(attribute_tags, where)
        attribute_rsit, attribute_rsit_tags = rsit_of(attribute_tags, where)
        taxonomy, type_ = attribute_rsit or self.rsit or DEFAULT_CLASSIFICATION
        vulnerability = self._cve(obj) if taxonomy == "vulnerable" else None
        identifier = self._identifier(taxonomy, type_, vulnerability, attribute_tags)
        evidence = self._evidence(attribute, obj)
        evidence["misp_rsit_from"] = (
            "attribute tag" if attribute_rsit else "event tag" if self.rsit else "default: no rsit tag"
        )
        if len(attribute_rsit_tags or self.rsit_tags) > 1:
            evidence["misp_rsit_tags"] = attribute_rsit_tags or self.rsit_tags
        evidence["misp_tlp_from"] = (
            "attribute tag" if attribute_tlp else "event tag" if self.tlp else "partner default"
        )
        if misp_type == "url" and "://" not in str(attribute.value):
            evidence["misp_url_as_given"] = str(attribute.value).strip()  # the scheme was assumed
        return Notification(
            partner=self.context.partner,
            feed=FORMAT,
            classification=Classification(taxonomy, type_, identifier),
            observed_at=observed_at,
            tlp=attribute_tlp or self.tlp or self.context.default_tlp,
            vulnerability=vulnerability,
            evidence=evidence,
            source=SourceRef(self.context.file_label, self.record.line),
            direct_owner_only=misp_type in EMAIL_TYPES,
            discard_unrouted=misp_type in EMAIL_TYPES,
            **fields,
        )

    def _from_object(
        self, attribute: MISPAttribute, obj: MISPObject, fields: dict[str, Any]
    ) -> list[_Unusable]:
        """Fill in what the attribute's notification takes from its object (port, protocol);
        return the object's attributes it would take whose value is unusable (then: withheld).

        An unusable object value withholds the notification rather than being dropped from it
        (the project rule: a present but invalid value is a fault), and it does so for every
        value taken, not only for some:
        - the port is part of the natural key's observable (`198.51.100.42:3389`) and of the
          network-traffic SCO, the protocol of that SCO (absent, it reads `tcp`), the time
          decides the natural key's day. Made without them, the notification is a different
          one: delivered to the recipient as a port-less (or wrongly dated) occurrence, merged
          with a genuinely port-less one of the host, and left standing beside the right one
          when the partner sends the corrected event. A quarantined row cannot call back what
          a recipient has already received; a withheld notification is made, correctly, when
          the corrected event is ingested again.
        - it is what a top-level `ip-dst|port` with an unusable port already gets (the whole
          attribute is a fault, no port-less notification): an object spreads the same
          occurrence over several attributes.
        - only notifications that take the value are withheld, as one unusable attribute does
          not cost its neighbours theirs: an `ip-src` beside a bad `dst-port`, or an attribute
          with its own first_seen beside a bad `first-seen`, keeps its notification.
        The fault is the unusable attribute (it is what the partner must fix): one per
        attribute, counted in `attributes_quarantined`, naming the withheld notifications.
        Values the adapter does not read (`last-seen`, `src-port`, several `dst-port`s) stay
        context, as before.
        """
        unusable: list[_Unusable] = []
        taken: dict[str, Any] = {}
        if str(attribute.type) in _TAKES_OBJECT_PORT and "port" not in fields:
            ports = _object_attributes(obj, "dst-port")
            if len(ports) == 1:
                try:
                    taken["port"] = port(ports[0].value)
                except CONVERSION_ERRORS:
                    unusable.append(ports[0])
                else:
                    protocols = _object_attributes(obj, "protocol")
                    if len(protocols) == 1:
                        protocol = str(protocols[0].value).strip().lower()
                        if _PROTOCOL.match(protocol):
                            taken["protocol"] = protocol
                        else:
                            unusable.append(protocols[0])
        if not unusable:
            fields.update(taken)
        return unusable

    def _attribute_fault(self, attribute: MISPAttribute, obj: MISPObject | None, reason: str) -> None:
        """An attribute whose own value or time is unusable: no notification, one fault."""
        misp_type = str(attribute.type)
        self.without_notification[misp_type] += 1
        self.unusable.append(
            {"uuid": self._given(attribute.uuid) or "(none)", "type": misp_type, "reason": reason}
        )
        self.faults.append(f"{self.where} {self._named(attribute, obj)}: {reason}")

    def _withheld_fault(self, bad: _Unusable, obj: MISPObject | None, held: list[MISPAttribute]) -> None:
        """One unusable value that notifications of other attributes take (an object's port,
        protocol or time, the event's date): a fault naming it and the notifications it withheld."""
        listed = [
            f"attribute {given} ({a.type})"
            if _UUID.match(given := self._given(a.uuid))
            else f"an attribute without a valid uuid ({a.type})"
            for a in held[:UNUSABLE_LISTED]
        ]
        more = f" and {len(held) - len(listed)} more" if len(held) > len(listed) else ""
        withheld = f"withheld the notification of {', '.join(listed)}{more}"
        if isinstance(bad, _TimeSource) and bad.attribute is not None:
            bad = bad.attribute  # the object's first-seen attribute
        if isinstance(bad, _TimeSource):  # the object's own first_seen, or the event's date
            reason = f"not a usable {bad.field} (value withheld)"
            uuid, kind = (
                (self._given(bad.obj.uuid), f"object {bad.obj.name}")
                if bad.obj is not None
                else (str(self.event.uuid), "event")
            )
            self.unusable.append(
                {
                    "uuid": uuid or "(none)",
                    "type": kind,
                    "reason": f"{reason}: {len(held)} notification(s) withheld",
                }
            )
            holder = f" {self._named_object(bad.obj)}" if bad.obj is not None else ""
            self.faults.append(f"{self.where}{holder}: {reason}; {withheld}")
            return
        relation = str(bad.get("object_relation") or "")
        if str(bad.type) not in ROUTABLE_TYPES:
            self.not_routable -= 1  # counted as context before it turned out to be needed and unusable
        reason = f"not a usable {relation} of its object (value withheld)"
        self.unusable.append(
            {
                "uuid": self._given(bad.uuid) or "(none)",
                "type": str(bad.type),
                "reason": f"{reason}: {len(held)} notification(s) of the object withheld",
            }
        )
        self.faults.append(f"{self.where} {self._named(bad, obj, object_uuid=True)}: {reason}; {withheld}")

    def _time_source(self, attribute: MISPAttribute, obj: MISPObject | None) -> _TimeSource:
        """The value that decides the notification's time: the first present of the attribute's
        first_seen, the object's first_seen, the object's `first-seen` attribute, the
        attribute's timestamp and the event's date. A value the input gave and PyMISP dropped
        is present (DROPPED): it is not passed over for the next one."""
        candidates = [_TimeSource(self._first_seen(attribute), "first_seen", attribute)]
        if obj is not None:
            seen = _single(_object_attributes(obj, "first-seen"))
            candidates.append(_TimeSource(self._first_seen(obj), "first_seen", obj=obj))
            if seen is not None:
                candidates.append(_TimeSource(seen.value, "first-seen", seen))
        candidates += [
            _TimeSource(attribute.get("timestamp"), "timestamp", attribute),
            _TimeSource(self.day, "date"),
        ]
        for candidate in candidates:
            if candidate.value is not None and candidate.value != "":
                return candidate
        return candidates[-1]

    def _first_seen(self, entity: MISPAttribute | MISPObject) -> Any:
        return DROPPED if id(entity) in self.dropped else entity.get("first_seen")

    def _time_of(self, source: _TimeSource) -> datetime | None:
        """The source's value as an observation time; None when it is unusable."""
        if source.value is DROPPED:
            return None
        if source.value is None or source.value == "":
            raise RowRejected(f"{self.where}: no observation time (first_seen, timestamp or event date)")
        try:
            return _as_utc(source.value)
        except CONVERSION_ERRORS:
            return None

    def _identifier(self, taxonomy: str, type_: str, cve: str | None, attribute_tags: list[str]) -> str:
        if cve:
            return cve
        if (taxonomy, type_) == ("malicious-code", "infected-system"):
            family = _malpedia_family(attribute_tags) or _malpedia_family(self.tags)
            if family:
                return family
        return self.info or "misp-event"

    def _cve(self, obj: MISPObject | None) -> str | None:
        own = sorted(set(self._cves(obj.attributes))) if obj is not None else []
        if len(own) == 1:
            return own[0]
        return self.cves[0] if len(self.cves) == 1 else None

    @staticmethod
    def _cves(attributes: Iterable[MISPAttribute]) -> Iterator[str]:
        for attribute in attributes:
            if attribute.get("type") == "vulnerability" and not attribute.get("deleted"):
                value = str(attribute.value).strip().upper()
                if _CVE.match(value):
                    yield value

    def _named(self, attribute: MISPAttribute, obj: MISPObject | None, *, object_uuid: bool = False) -> str:
        """The attribute as a quarantine reason names it: UUID, type, object; nothing else of the input.

        The object's UUID is named when the attribute's is not usable, or when asked for."""
        given = self._given(attribute.uuid)
        named = bool(_UUID.match(given))
        context = str(attribute.type)
        if obj is not None:
            object_name = str(obj.name)
            context += f", in object {object_name}" if _OBJECT_NAME.match(object_name) else ", in an object"
            given_object = self._given(obj.uuid)
            if (object_uuid or not named) and _UUID.match(given_object):
                context += f" {given_object}"
        return f"{f'attribute {given}' if named else 'attribute without a valid uuid'} ({context})"

    def _named_object(self, obj: MISPObject) -> str:
        """The object as a quarantine reason names it: `object <name> <uuid>`, each where usable."""
        name = str(obj.name) if _OBJECT_NAME.match(str(obj.name)) else "(unnamed)"
        given = self._given(obj.uuid)
        return f"object {name}" + (f" {given}" if _UUID.match(given) else " without a valid uuid")

    def _given(self, value: Any) -> str:
        """A UUID from the input; "" (left out of evidence) for one PyMISP made up."""
        return str(value) if str(value) in self.given_uuids else ""

    def _evidence(self, attribute: MISPAttribute, obj: MISPObject | None) -> dict[str, Any]:
        evidence: dict[str, Any] = {
            "misp_event_uuid": str(self.event.uuid),
            "misp_event_info": self.info,
            "misp_attribute_uuid": self._given(attribute.uuid),
            "misp_type": str(attribute.type),
            "misp_category": str(attribute.get("category") or ""),
            "misp_to_ids": bool(attribute.get("to_ids")),
        }
        if self.org:
            evidence["misp_org"] = str(self.org)
        if attribute.get("comment"):
            evidence["misp_comment"] = str(attribute.comment)
        if obj is not None:
            evidence["misp_object_name"] = str(obj.name)
            evidence["misp_object_uuid"] = self._given(obj.uuid)
            evidence["misp_object_relation"] = str(attribute.get("object_relation") or "")
            if obj.get("comment"):
                evidence["misp_object_comment"] = str(obj.comment)
        if self.without_notification:
            evidence["misp_attributes_without_notification"] = dict(sorted(self.without_notification.items()))
        if self.unusable:
            evidence["misp_unusable_attributes"] = self.unusable[:UNUSABLE_LISTED]
            evidence["misp_unusable_attribute_count"] = len(self.unusable)
        return {k: v for k, v in evidence.items() if v != ""}


# --- pulling from a MISP instance ------------------------------------------------------------


def pull_events(url: str, key: str, *, verify: bool | str = True, **search: Any) -> Iterator[dict[str, Any]]:
    """Events from a MISP instance's `events/restSearch`, each as `{"Event": {...}}`.

    `url` and `key` are the instance and an API key (an automation key of a read-only user is
    enough); `verify` is passed to PyMISP as `ssl`: True, False, or a CA bundle path.
    `search` takes PyMISP's `search()` filters (`tags=["rsit:%"]`, `timestamp="1d"`,
    `published=True`, `limit=` and `page=` for paging ...); `controller` is always `events`.

    Each event has the shape the `misp-event` format reads: write them one per line with
    `orjson.dumps` into a `.jsonl` file and ingest it with `--format misp-event`, or feed the
    dicts to `MispAdapter.notifications(RawRecord(n, event, ""))`. Raises PyMISPError when the
    instance cannot be reached or answers with errors.
    """
    from pymisp.exceptions import PyMISPError

    search.pop("controller", None)
    search["pythonify"] = True
    answer = PyMISP(url, key, ssl=verify).search(controller="events", **search)
    if isinstance(answer, dict):  # MISP answered with an error document, not events
        raise PyMISPError(f"MISP search failed: {answer.get('errors') or answer}")
    for event in answer:
        if isinstance(event, MISPEvent):
            yield {"Event": orjson.loads(event.to_json())}  # plain JSON, as a MISP export holds it
