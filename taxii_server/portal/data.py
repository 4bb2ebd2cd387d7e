"""What the portal shows of a recipient's collection: its notifications with their state, one
notification's detail, filtered and paged. Read through the store's reader, never SQL here.

A recipient's collection is the delivery log (connector/store/deliveries.py): the portal walks
its entries as TAXII does, so it shows exactly what the recipient's TAXII collection holds,
each notification once, at the latest version delivered there. Filtering happens on that
walk: a page costs a pass over the collection's entries (blocks of about four bytes an entry),
not an index lookup. That is fine for the thousands of notifications a person looks through;
a filter index per recipient would cost every ingest, for a screen read now and then.
"""

from __future__ import annotations

import ipaddress
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import cached_property, lru_cache
from typing import Any

from connector import feedback
from connector.collections import recipient_collection_id
from connector.config import Config
from connector.render.collection import _Context  # the one place entries become STIX objects
from connector.render.stix import notification_of, own_ids
from connector.store import Reader, Store
from connector.store import portal as portal_sql
from connector.store import states as st
from connector.store.deliveries import iter_entries
from connector.store.records import Kind, NotificationRecord, VersionRecord
from connector.store.times import ms_to_timestamp
from connector.store.writer import SLOTS

PAGE_SIZE = 50
EXPORT_LIMIT = 100_000  # rows of one CSV export: a selection, not a dump of the store
BUNDLE_LIMIT = 10_000  # notifications in one STIX bundle export (about 10 objects each)


@dataclass(frozen=True, slots=True)
class Item:
    """One notification as a row of the recipient's list (and of its CSV export)."""

    stamp: int  # date_added of the latest version delivered here (µs): the list's order
    classification: str
    identifier: str
    partner: str
    feed: str
    case_id: str | None
    tlp: str
    ip: str | None
    port: int | None
    hostname: str | None
    url: str | None
    email: str | None
    first_ms: int  # first seen, ms (formatted when shown: strings per item cost memory)
    last_ms: int
    count: int
    state: str
    concerns: str  # the recipient it is about: this one, or a child organisation it serves
    record: NotificationRecord = field(repr=False, compare=False)
    id_kind: Kind = field(repr=False, compare=False)  # the kind its ids derive from

    @property
    def sighting(self) -> str:
        """Its sighting id, worked out when asked for (the rows shown or exported): three
        UUIDv5 hashes, 40% of a list's time when done for every notification."""
        return sighting_id(self.record, self.id_kind)

    @property
    def first_seen(self) -> str:
        return ms_to_timestamp(self.first_ms)

    @property
    def last_seen(self) -> str:
        return ms_to_timestamp(self.last_ms)

    @property
    def observable(self) -> str:
        host = self.ip or self.hostname or self.email or self.url or ""
        if self.port and self.ip:
            return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        return host


@dataclass(frozen=True)
class Filters:
    """The list's filters, as the form gives them (empty: no filter)."""

    classification: str = ""
    feed: str = ""  # "partner" or "partner/feed"
    state: str = ""
    since: date | None = None
    until: date | None = None
    search: str = ""
    concerns: str = ""

    def matches(self, item: Item) -> bool:
        if self.classification and item.classification != self.classification:
            return False
        if self.concerns and item.concerns != self.concerns:
            return False
        if self.feed and self.feed not in (item.partner, f"{item.partner}/{item.feed}"):
            return False
        if self.state and item.state != self.state:
            return False
        if self.since and item.first_ms < _day_ms(self.since):
            return False
        if self.until and item.first_ms >= _day_ms(self.until) + 86_400_000:
            return False
        return not self.search or _found(self._needle, self._search_network, item)

    @cached_property
    def _needle(self) -> str:
        return self.search.strip().lower()

    @cached_property
    def _search_network(self) -> Network | None:
        """The search as a network (an address is a /32 or /128), parsed once per request."""
        return _network(self._needle)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _day_ms(day: date) -> int:
    """The start of a UTC day in ms."""
    return (day - date(1970, 1, 1)).days * 86_400_000


def _network(needle: str) -> Network | None:
    try:
        return ipaddress.ip_network(needle, strict=False)
    except ValueError:
        return None


def _found(needle: str, network: Network | None, item: Item) -> bool:
    """An address (or network) search matches addresses inside it; anything else is a domain or
    text search: a host name equal to it or under it, or the URL or e-mail address holding it."""
    if network is not None and item.ip:
        try:
            return ipaddress.ip_address(item.ip.split("/")[0]) in network
        except ValueError:
            return False
    host = (item.hostname or "").lower()
    if host == needle or host.endswith("." + needle):
        return True
    return any(needle in (value or "").lower() for value in (item.url, item.email, item.ip))


@dataclass
class Listing:
    items: list[Item]
    total: int  # matching the filters
    page: int
    pages: int
    choices: dict[str, list[str]] = field(default_factory=dict)  # the filters' options


def _latest_held(store: Store, number: int) -> dict[int, VersionRecord]:
    """Notification -> the latest version of it delivered to the collection."""
    out: dict[int, VersionRecord] = {}
    with store.reading() as reader:
        stamps = [stamp for stamp, _bits in iter_entries(reader.conn, number, None)]
        for start in range(0, len(stamps), 5000):
            for stamp, version in reader.versions(stamps[start : start + 5000]).items():
                known = out.get(version.notification)
                if known is None or stamp > known.stamp:
                    out[version.notification] = version
    return out


def descendants(config: Config, recipient: str) -> list[str]:
    """The organisations this recipient serves as parent, children before grandchildren."""
    out: list[str] = []
    level = [recipient]
    while level:
        level = [r.id for r in config.recipients if r.parent in level and r.id not in out]
        out += level
    return out


def _child_numbers(store: Store, config: Config | None, recipient: str) -> dict[int, tuple[int, str]]:
    """Collection number of each descendant -> (its depth order, its id): the deepest one a
    version went to is the organisation the notification is about."""
    if config is None:
        return {}
    out = {}
    for depth, child in enumerate(descendants(config, recipient)):
        number = store.collection_number(recipient_collection_id(child))
        if number is not None:
            out[number] = (depth, child)
    return out


def _deleted(reader: Reader, number: int, held: dict[int, VersionRecord]) -> list[int]:
    """Notifications whose sighting an operator took out of the collection (TAXII DELETE) at
    the version held there: TAXII no longer serves it, so the portal does not show it either.
    One query for the collection's removals (rare); only notifications with a removal among
    their version's slots are rendered to find which object it was."""
    if not held:
        return []
    stamps = sorted(v.stamp for v in held.values())
    removed = reader.removed_between(number, stamps[0], stamps[-1] + SLOTS)
    if not removed:
        return []
    suspects = {pk: v for pk, v in held.items() if any(v.stamp + i in removed for i in range(SLOTS))}
    out = []
    if suspects:
        context = _Context(reader)
        context.load([v.stamp for v in suspects.values()])
        for pk, v in suspects.items():
            _n, _v, rendered = context.render(v.stamp)
            if any(r.obj["type"] == "sighting" and v.stamp + r.slot in removed for r in rendered):
                out.append(pk)
    return out


class Lists:
    """The last few recipients' lists, kept while their collection is unchanged (a page, a
    filter, an export of the same collection then skip the walk, 2 s at 100,000 notifications).
    States are read afresh every time: they change without a delivery. Per process, bounded by
    lists and by notifications held in all (an item takes about 1 KB: 100 MB at most)."""

    def __init__(self, size: int = 8, max_items: int = 100_000) -> None:
        self._size = size
        self._max_items = max_items
        self._lists: OrderedDict[tuple[str, tuple[int, ...]], tuple[tuple[int, ...], list[Item]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, key: tuple[str, tuple[int, ...]], fingerprint: tuple[int, ...]) -> list[Item] | None:
        with self._lock:
            found = self._lists.get(key)
            if found is None or found[0] != fingerprint:
                return None
            self._lists.move_to_end(key)
            return found[1]

    def put(self, key: tuple[str, tuple[int, ...]], fingerprint: tuple[int, ...], listed: list[Item]) -> None:
        with self._lock:
            self._lists.pop(key, None)
            if len(listed) > self._max_items:
                return  # too large to keep: walked every time
            self._lists[key] = (fingerprint, listed)
            while (
                len(self._lists) > self._size
                or sum(len(v[1]) for v in self._lists.values()) > self._max_items
            ):
                self._lists.popitem(last=False)


def items(
    store: Store, recipient: str, config: Config | None = None, lists: Lists | None = None
) -> list[Item]:
    """Every notification of the recipient's collection, newest first; given the
    configuration, each says which of the recipient's child organisations it concerns. With
    `lists`, an unchanged collection's list is taken from there, its states read again."""
    number = store.collection_number(recipient_collection_id(recipient))
    if number is None:
        return []
    children = _child_numbers(store, config, recipient)
    if lists is None:
        return _items(store, recipient, number, children)
    key = (recipient, tuple(sorted(children)))
    with store.reading() as reader:
        fingerprint = portal_sql.collection_fingerprint(reader.conn, number)
    listed = lists.get(key, fingerprint)
    if listed is None:
        listed = _items(store, recipient, number, children)
        lists.put(key, fingerprint, listed)
        return listed
    with store.reading() as reader:
        states = st.of(reader.conn, number, [i.record.pk for i in listed])
    fresh = [i if _state_of(states, i) == i.state else replace(i, state=_state_of(states, i)) for i in listed]
    lists.put(key, fingerprint, fresh)
    return fresh


def _state_of(states: dict[int, st.State], item: Item) -> str:
    state = states.get(item.record.pk)
    return state.state if state else st.ROUTED


def _items(store: Store, recipient: str, number: int, children: dict[int, tuple[int, str]]) -> list[Item]:
    held = _latest_held(store, number)
    out: list[Item] = []
    with store.reading() as reader:
        for pk in _deleted(reader, number, held):
            del held[pk]
        states = st.of(reader.conn, number, held)
        kinds = reader.kinds()  # every kind (partner, feed, classification...): a few hundred rows
        pks = sorted(held, key=lambda pk: held[pk].stamp, reverse=True)
        for start in range(0, len(pks), 2000):
            part = pks[start : start + 2000]
            records = reader.notifications(part)
            for pk in part:
                state = states.get(pk)
                version = held[pk]
                via = [children[n] for n in version.recipients if n in children] if children else []
                concerns = max(via)[1] if via else recipient
                out.append(_item(records[pk], version, kinds, state.state if state else st.ROUTED, concerns))
    return out


@lru_cache(maxsize=4096)
def _classification(kind: Kind) -> str:
    """One string per kind, shared by its notifications' items."""
    return f"{kind.taxonomy}/{kind.type}"


def _item(n: NotificationRecord, v: VersionRecord, kinds: dict[int, Kind], state: str, concerns: str) -> Item:
    kind = kinds[v.kind_of(n)]
    return Item(
        stamp=v.stamp,
        classification=_classification(kind),
        identifier=n.identifier,
        partner=kind.partner,
        feed=kind.feed,
        case_id=kind.case_id,
        tlp=kind.tlp,
        ip=n.ip,
        port=n.port,
        hostname=n.hostname,
        url=n.url,
        email=n.email,
        first_ms=v.first_seen_of(n),
        last_ms=v.last_seen_of(n),
        count=v.count,
        state=state,
        concerns=concerns,
        record=n,
        id_kind=kinds[n.kind],
    )


def sighting_id(n: NotificationRecord, kind: Kind) -> str:
    """The notification's sighting id: its name in URLs, as in TAXII and `meldpunt feedback`."""
    return own_ids(notification_of(n, kind, {}))[-1]


def listing(all_items: list[Item], filters: Filters, page: int, size: int = PAGE_SIZE) -> Listing:
    """One page of the items the filters keep, and the options the filter form offers."""
    kept = [i for i in all_items if filters.matches(i)]
    pages = max(1, -(-len(kept) // size))
    page = min(max(1, page), pages)
    choices = {
        "classification": sorted({i.classification for i in all_items}),
        "feed": sorted({i.partner for i in all_items} | {f"{i.partner}/{i.feed}" for i in all_items}),
        "state": list(st.STATES),
        "concerns": sorted({i.concerns for i in all_items}),
    }
    return Listing(kept[(page - 1) * size : page * size], len(kept), page, pages, choices)


@dataclass
class Detail:
    item: Item
    evidence: dict[str, Any]
    objects: list[dict[str, Any]]
    history: list[st.Event]


def shown(store: Store, recipient: str, ident: str) -> tuple[feedback.Target, VersionRecord] | None:
    """The notification `ident` names in the recipient's collection and the latest version of
    it there, or None: not there (whether or not it exists elsewhere), or its sighting taken
    out by an operator. What the portal shows or takes feedback on."""
    try:
        found = feedback.target(store, recipient, ident)
    except feedback.NotFound:
        return None
    with store.reading() as reader:
        chain = [v for v in reader.version_chain(found.record.latest) if found.collection in v.recipients]
        if _deleted(reader, found.collection, {found.record.pk: chain[0]}):
            return None
    return found, chain[0]


def detail(store: Store, recipient: str, ident: str, reader_name: str | None = None) -> Detail | None:
    """A notification of the recipient's collection by its sighting (or observed-data) id; None
    when it is not shown there (the page then answers 404).

    `reader_name`: the recipient's own user opened it, so it is delivered (as a TAXII fetch or
    a MISP push makes it; an operator looking on does not). Without this, a notification
    acknowledged in the portal before any fetch would never count as delivered."""
    held = shown(store, recipient, ident)
    if held is None:
        return None
    found, latest = held
    number = found.collection
    if reader_name is not None:
        store.mark_delivered(
            recipient_collection_id(recipient),
            [(found.record.pk, found.routed_at * 1000)],
            source="portal",
            actor=reader_name,
        )
    with store.reading() as reader:
        context = _Context(reader)
        context.notifications[found.record.pk] = found.record
        context.load([latest.stamp])
        n, v, rendered = context.render(latest.stamp)
        kinds = context.kinds | reader.kinds([n.kind])
        state = st.of(reader.conn, number, [n.pk]).get(n.pk)
        item = _item(n, v, kinds, state.state if state else st.ROUTED, recipient)
        history = [e for e in st.events(reader.conn, [n.pk]) if e.collection == number]
        evidence = context.evidence[v.evidence_of(n)]
    return Detail(item, evidence, [r.obj for r in rendered], history)


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


CSV_COLUMNS = (
    "sighting",
    "classification",
    "identifier",
    "partner",
    "feed",
    "case_id",
    "tlp",
    "ip",
    "port",
    "hostname",
    "url",
    "email",
    "first_seen",
    "last_seen",
    "count",
    "state",
    "concerns",
)


def bundle(store: Store, selected: list[Item]) -> dict[str, Any]:
    """The selected notifications as one STIX 2.1 bundle: each at the version the collection
    holds (the objects TAXII serves for it), with the shared objects they refer to once."""
    objects: dict[str, dict[str, Any]] = {}
    stamps = [i.stamp for i in selected[:BUNDLE_LIMIT]]
    with store.reading() as reader:
        context = _Context(reader)
        for start in range(0, len(stamps), 256):
            part = stamps[start : start + 256]
            context.load(part)
            for stamp in part:
                for rendered in context.render(stamp)[2]:
                    objects.setdefault(rendered.obj["id"], rendered.obj)
    return {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": list(objects.values())}


def _cell(value: object) -> str:
    """A CSV cell that a spreadsheet shows as text: a value starting with = + - @ (a partner's
    URL or host name can) would otherwise be run as a formula when the export is opened."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_rows(selected: Iterable[Item]) -> Iterable[list[str]]:
    yield list(CSV_COLUMNS)
    for item in selected:
        yield [_cell(getattr(item, c)) for c in CSV_COLUMNS]
