"""Constituency self-service (issue #16, item 2): a recipient proposes a network, AS number or
domain; an operator approves or refuses it; approved claims route like configured ones.

A claim is checked as the configuration is (a network without host bits, not IPv4-mapped; an AS
number in range; a domain that is no public suffix) and stays pending until an operator
decides, except a sub-range of what the recipient holds already (its configured constituency
or an approved claim) that routes to it today, which approves itself: it takes nothing from
anybody (a more specific claim of another inside it still wins there; one around it that is
more specific than the recipient's own means the range is not the recipient's: pending).
Conflicts (the same or an overlapping network, the same AS number, the same domain or one above
or below it, held by another recipient) are shown to the operator with the other recipient's
name; the recipient only sees "pending". An exact duplicate of another recipient's claim cannot
be approved: one prefix, one owner.

Approved claims join the configured constituencies whenever a router is built
(`with_claims`): every ingest builds its own, so the next ingest routes by them without a
restart; a server rebuilds its router when its portal approves a claim.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from connector.config import Config, claimable_domain
from connector.store import Store
from connector.store import claims as sql
from connector.store.claims import APPROVED, PENDING, REFUSED, ClaimRow
from connector.store.times import now_us

log = logging.getLogger("meldpunt.claims")
KINDS = ("network", "asn", "domain")
__all__ = ["APPROVED", "KINDS", "PENDING", "REFUSED", "ClaimError", "ClaimRow", "Holding"]


class ClaimError(ValueError):
    """A claim that cannot be made or approved, with the reason to show."""


@dataclass(frozen=True)
class Holding:
    recipient: str
    kind: str
    value: str
    source: str  # "configuration" or "claim"


# Claims a recipient may have filed and not had refused: each approval rebuilds every server's
# router, so one recipient's filings must not grow without bound.
MAX_CLAIMS_PER_RECIPIENT = 200


def normalise(kind: str, value: str) -> str:
    """The claim as the configuration would hold it, checked as the configuration is checked:
    an approved claim goes into every router built, and a value a router cannot take (an IPv6
    zone, say) would stop every ingest and server start."""
    text = value.strip()
    if "\x00" in text:
        raise ClaimError("holds a NUL character")
    if kind == "network":
        if "%" in text:
            raise ClaimError("an IPv6 zone (%...) names an interface, not a network")
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise ClaimError(f"not a network without host bits: {exc}") from None
        if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(
            ipaddress.ip_network("::ffff:0:0/96")
        ):
            raise ClaimError("an IPv4-mapped IPv6 network: claim the IPv4 network")
        return network.with_prefixlen
    if kind == "asn":
        digits = text.upper().removeprefix("AS")
        if not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) <= 4294967295:
            raise ClaimError("not an AS number (1 to 4294967295)")
        return str(int(digits))
    if kind == "domain":
        try:
            return claimable_domain(text)
        except ValueError as exc:
            raise ClaimError(f"{exc} (letters, digits, hyphens; IDNs in their xn-- form)") from None
    raise ClaimError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")


def holdings(config: Config, store: Store) -> list[Holding]:
    """Everything claimed: the configured constituencies and the approved claims."""
    out = []
    for r in config.recipients:
        out += [Holding(r.id, "network", n.with_prefixlen, "configuration") for n in r.constituency.networks]
        out += [Holding(r.id, "asn", str(a), "configuration") for a in r.constituency.asns]
        out += [Holding(r.id, "domain", d, "configuration") for d in r.constituency.domains]
    with store.reading() as reader:
        out += [Holding(c.recipient, c.kind, c.value, "claim") for c in sql.rows(reader.conn, APPROVED)]
    return out


def _within(kind: str, inner: str, outer: str) -> bool:
    """`inner` is `outer` or inside it (a sub-range, a subdomain)."""
    if kind == "network":
        a, b = ipaddress.ip_network(inner), ipaddress.ip_network(outer)
        return a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]
    if kind == "domain":
        return inner == outer or inner.endswith("." + outer)
    return inner == outer


def conflicts(recipient: str, kind: str, value: str, held: list[Holding]) -> list[Holding]:
    """What other recipients hold of the same kind that overlaps the claim (for operators' eyes
    only). Routing tries addresses, then AS numbers, then domains, so an operator also needs
    `routes_to_now` (a network inside another's AS)."""
    return [
        h
        for h in held
        if h.recipient != recipient
        and h.kind == kind
        and (_within(kind, value, h.value) or _within(kind, h.value, value))
    ]


def _specificity(kind: str, value: str) -> int:
    return ipaddress.ip_network(value).prefixlen if kind == "network" else value.count(".")


def owner_now(kind: str, value: str, held: list[Holding]) -> str | None:
    """Who the claimed range or domain routes to today: the holder of the most specific claim
    covering all of it (as routing decides). A claim whose owner it is already takes nothing
    from anybody: more specific claims of others inside it still win there."""
    covering = [h for h in held if h.kind == kind and _within(kind, value, h.value)]
    if not covering:
        return None
    return max(covering, key=lambda h: _specificity(kind, h.value)).recipient


def propose(config: Config, store: Store, recipient: str, kind: str, value: str, by: str) -> ClaimRow:
    """Record a recipient's claim: approved at once when what it claims routes to the recipient
    already (a sub-range or subdomain of its own, not inside a more specific claim of another);
    pending otherwise."""
    if recipient not in {r.id for r in config.recipients}:
        raise ClaimError(f"unknown recipient {recipient!r}")
    value = normalise(kind, value)
    held = holdings(config, store)
    with store.reading() as reader:
        pending = sql.rows(reader.conn, PENDING, recipient)
    if any(h.recipient == recipient and h.kind == kind and h.value == value for h in held) or any(
        c.kind == kind and c.value == value for c in pending
    ):
        raise ClaimError("this recipient has claimed it already")
    filed = len(pending) + sum(1 for h in held if h.recipient == recipient and h.source == "claim")
    if filed >= MAX_CLAIMS_PER_RECIPIENT:
        raise ClaimError(
            f"{MAX_CLAIMS_PER_RECIPIENT} claims filed already: ask the clearinghouse to put them "
            "in the configuration"
        )
    status = APPROVED if owner_now(kind, value, held) == recipient else PENDING
    reason = "inside what the recipient holds already" if status == APPROVED else None
    try:
        with store.writing() as w:
            pk = sql.add(w.conn, recipient, kind, value, status, by, now_us() // 1000, reason)
    except IntegrityError:  # another recipient's approval of the same value landed meanwhile
        raise ClaimError(f"{value} is held by another recipient already") from None
    return claim(store, pk)


def claim(store: Store, pk: int) -> ClaimRow:
    with store.reading() as reader:
        found = [c for c in sql.rows(reader.conn) if c.pk == pk]
    if not found:
        raise ClaimError(f"no claim {pk}")
    return found[0]


def claims(store: Store, status: str | None = None, recipient: str | None = None) -> list[ClaimRow]:
    with store.reading() as reader:
        return sql.rows(reader.conn, status, recipient)


def decide(
    config: Config, store: Store, pk: int, approve: bool, by: str, reason: str | None = None
) -> ClaimRow:
    """An operator's decision on a pending claim. An exact duplicate of what another recipient
    holds is refused: approving it would give one prefix, AS or domain two owners."""
    found = claim(store, pk)
    if found.status != PENDING:
        raise ClaimError(f"claim {pk} is {found.status} already")
    if approve:
        taken = [
            h
            for h in conflicts(found.recipient, found.kind, found.value, holdings(config, store))
            if h.value == found.value
        ]
        if taken:
            raise ClaimError(f"{found.value} is held by {taken[0].recipient} already")
    try:
        with store.writing() as w:
            if not sql.decide(w.conn, pk, APPROVED if approve else REFUSED, by, now_us() // 1000, reason):
                raise ClaimError(f"claim {pk} was decided meanwhile")
    except IntegrityError:  # the same value approved for another recipient meanwhile
        raise ClaimError(f"{found.value} is held by another recipient already") from None
    return claim(store, pk)


def with_claims(config: Config, store: Store | None) -> Config:
    """The configuration with every approved claim added to its recipient's constituency: what
    routers are built from."""
    if store is None:
        return config
    approved = [c for c in claims(store, APPROVED) if _usable(c)]
    if not approved:
        return config
    recipients = []
    for r in config.recipients:
        mine = [c for c in approved if c.recipient == r.id]
        if not mine:
            recipients.append(r)
            continue
        c = r.constituency
        extended = c.model_copy(
            update={
                "networks": [
                    *c.networks,
                    *(ipaddress.ip_network(x.value) for x in mine if x.kind == "network"),
                ],
                "asns": [*c.asns, *(int(x.value) for x in mine if x.kind == "asn")],
                "domains": [*c.domains, *(x.value for x in mine if x.kind == "domain")],
            }
        )
        recipients.append(r.model_copy(update={"constituency": extended}))
    return config.model_copy(update={"recipients": recipients})


def _usable(c: ClaimRow) -> bool:
    """A stored claim a router can take; one that is not (stored by an older, laxer check) is
    left out with an error in the log rather than stopping every router built."""
    try:
        normalise(c.kind, c.value)
    except ClaimError as exc:
        log.error(
            "approved claim left out", extra={"claim": c.pk, "recipient": c.recipient, "error": str(exc)}
        )
        return False
    return True


def generation(store: Store) -> tuple[int, int]:
    """What changes when the approved claims do (see connector/store/claims.py)."""
    with store.reading() as reader:
        return sql.generation(reader.conn)
