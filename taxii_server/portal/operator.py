"""The operator's page: ingest runs with their counts and quarantined rows, misrouting reports
with how each was routed (`meldpunt misrouted`), the MISP outbox per recipient
(`meldpunt misp status`), and notifications per day as a server-side SVG chart.

For users with `operator: true` only; to anybody else the pages do not exist (404).
"""

from __future__ import annotations

import ipaddress
import statistics
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from connector import stats
from connector.explain import explain_target, observable_host
from connector.publicsuffix import is_public_suffix
from connector.routing import Policy
from connector.store import portal as portal_sql
from taxii_server.portal.i18n import translator
from taxii_server.portal.svg import lines, stacked_bars
from taxii_server.portal.web import (
    PREFIX,
    PortalError,
    Viewer,
    form_checked,
    language,
    page,
    secured,
    viewer,
)

router = APIRouter()
PLOT_DAYS = 30


def _operator(who: Viewer) -> None:
    if not who.principal.operator:
        raise PortalError(404, "not_found")


def _misrouted(who: Viewer) -> list[dict[str, Any]]:
    out = []
    for m in stats.misrouted(who.server.store):
        policy = Policy(m.kind.tlp, m.kind.taxonomy, m.kind.type, m.kind.direct_owner_only)
        lines = explain_target(who.server.router, m.sighting, policy, who.server.store)
        out.append(
            {"recipient": m.recipient, "sighting": m.sighting, "at": m.at, "note": m.note, "explain": lines}
        )
    return out


def group_of(observable: str) -> str:
    """Where an unrouted observable belongs, for a claim to cover it: its /24 (IPv4) or /48
    (IPv6) network, else the registrable domain of its host (the label below the public
    suffix), else the host itself."""
    host = observable_host(observable)
    try:
        address = ipaddress.ip_address(host.split("/")[0])
    except ValueError:
        labels = host.lower().rstrip(".").split(".")
        for start in range(len(labels) - 1, -1, -1):
            if not is_public_suffix(".".join(labels[start:])):
                return ".".join(labels[start:])
        return host
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def _unrouted(who: Viewer, runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The latest runs' unrouted observables, grouped by network or domain and by AS number
    (the partner's, else the IP-to-ASN table's), largest first."""
    rows = [(run["id"], row) for run in runs for row in who.server.store.unrouted(run["id"])]
    with who.server.store.reading() as reader:
        records = reader.notifications({row["notification"] for _run, row in rows})
    router = who.server.router
    by_group: dict[str, dict[str, Any]] = {}
    by_asn: dict[str, dict[str, Any]] = {}
    for run_id, row in rows:
        record = records.get(row["notification"])
        asn = record.asn if record is not None else None
        if asn is None and record is not None and record.ip:
            asn = router.asn_of_ip(record.ip.split("/")[0])
        for groups, key in ((by_group, group_of(row["observable"])), (by_asn, f"AS{asn}" if asn else "-")):
            group = groups.setdefault(key, {"count": 0, "examples": [], "runs": set(), "asns": set()})
            group["count"] += 1
            group["runs"].add(run_id)
            if asn:
                group["asns"].add(asn)
            if len(group["examples"]) < 3 and row["observable"] not in group["examples"]:
                group["examples"].append(row["observable"])

    def ordered(groups: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        top = sorted(groups.items(), key=lambda item: (-item[1]["count"], item[0]))[:100]
        return [{"group": g, **v, "runs": sorted(v["runs"]), "asns": sorted(v["asns"])} for g, v in top]

    return {"by_group": ordered(by_group), "by_asn": ordered(by_asn)}


def _outbox(who: Viewer) -> dict[str, dict[str, Any]]:
    """Per recipient: entries by status, and one failed entry's error (MISP's own message)."""
    per: dict[str, dict[str, Any]] = {}
    for recipient, status, _next, error in who.server.store.misp_entries():
        entry = per.setdefault(recipient, {"counts": Counter(), "error": None})
        entry["counts"][status] += 1
        if status == "failed" and error and entry["error"] is None:
            entry["error"] = error[:300]
    return dict(sorted(per.items()))


def per_day(
    rows: list[tuple[int, str, str, str, str, int]], today: date, days: int, by: str = "classification"
) -> tuple[list[str], dict[str, list[int]]]:
    """Rows of (day number, taxonomy, type, partner, feed, count) as one series per
    classification (or per partner/feed, `by="feed"`) over the `days` days up to `today` (days
    without notifications are zeros, so gaps show)."""
    first = today - timedelta(days=days - 1)
    labels = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    epoch = date(1970, 1, 1)
    series: dict[str, list[int]] = {}
    for day, taxonomy, kind, partner, feed, count in rows:
        index = (epoch + timedelta(days=day) - first).days
        label = f"{partner}/{feed}" if by == "feed" else f"{taxonomy}/{kind}"
        if 0 <= index < days:
            series.setdefault(label, [0] * days)[index] += count
    return labels, dict(sorted(series.items()))


def _plot(
    who: Viewer, title: str, until: date | None, by: str
) -> tuple[str, list[str], dict[str, list[int]]]:
    """The chart of the PLOT_DAYS days up to `until`, by default up to the latest day with
    notifications (a quiet week should not show an empty chart of nothing)."""
    epoch = date(1970, 1, 1)
    with who.server.store.reading() as reader:
        if until is None:
            latest = portal_sql.latest_day(reader.conn)
            until = epoch + timedelta(days=latest) if latest is not None else datetime.now(UTC).date()
        since = (until - timedelta(days=PLOT_DAYS - 1) - epoch).days
        rows = portal_sql.notifications_per_day(reader.conn, since)
    labels, series = per_day(rows, until, PLOT_DAYS, by)
    return stacked_bars(labels, series, title), labels, series


def times_per_day(
    rows: list[tuple[int, int | None, int | None]], until: date, days: int
) -> tuple[list[str], dict[str, list[float | None]]]:
    """Median hours from routing to delivery, and from delivery to acknowledgement, of the
    pairs routed each day (None: none that day)."""
    first = until - timedelta(days=days - 1)
    labels = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    delivery: list[list[float]] = [[] for _ in labels]
    ack: list[list[float]] = [[] for _ in labels]
    for routed, delivered, acknowledged in rows:
        index = (datetime.fromtimestamp(routed / 1000, UTC).date() - first).days
        if not 0 <= index < days:
            continue
        if delivered is not None:
            delivery[index].append((delivered - routed) / 3_600_000)
            if acknowledged is not None:
                ack[index].append((acknowledged - delivered) / 3_600_000)
    return labels, {
        "delivery": [statistics.median(v) if v else None for v in delivery],
        "acknowledgement": [statistics.median(v) if v else None for v in ack],
    }


def _times(
    who: Viewer, title: str, names: dict[str, str]
) -> tuple[str, list[str], dict[str, list[float | None]]]:
    with who.server.store.reading() as reader:
        latest = portal_sql.latest_routed(reader.conn)
        now = datetime.now(UTC)
        until = (datetime.fromtimestamp(latest / 1000, UTC) if latest is not None else now).date()
        since = datetime.combine(until - timedelta(days=PLOT_DAYS - 1), datetime.min.time(), UTC)
        rows = portal_sql.delivery_times(reader.conn, int(since.timestamp() * 1000))
    labels, series = times_per_day(rows, until, PLOT_DAYS)
    series = {names.get(key, key): values for key, values in series.items()}  # the legend's words
    return lines(labels, series, title, "h"), labels, series


def _overview(
    who: Viewer, title: str, times_title: str, until: date | None, by: str, names: dict[str, str]
) -> dict[str, Any]:
    store = who.server.store
    runs = store.runs(20)
    quarantined = {run["id"]: store.run_rows(run["id"], "quarantined")[:50] for run in runs}
    svg, labels, series = _plot(who, title, until, by)
    times_svg, time_days, times = _times(who, times_title, names)
    return {
        "runs": runs,
        "unrouted": _unrouted(who, runs),
        "quarantined": quarantined,
        "misrouted": _misrouted(who),
        "outbox": _outbox(who),
        "svg": svg,
        "times_svg": times_svg,
        "time_days": time_days,
        "times": times,
        "days": labels,
        "series": series,
    }


@router.get(PREFIX + "/operations/")
async def operations(request: Request, who: Viewer = Depends(viewer)) -> Response:
    _operator(who)
    text = translator(language(request))
    title, times_title = text["plot"], text["times_plot"]
    try:
        until = date.fromisoformat(request.query_params.get("until", ""))
    except ValueError:
        until = None
    if until is not None and until.year < 2:  # the chart's first day would be before year 1
        until = None
    by = "feed" if request.query_params.get("by") == "feed" else "classification"
    names = {key: text[key] for key in ("delivery", "acknowledgement")}
    values = await run_in_threadpool(_overview, who, title, times_title, until, by, names)
    values["retried"] = request.query_params.get("retried")
    values["by"] = by
    values["until"] = until.isoformat() if until else ""
    return page(request, "operations.html", values, who=who)


@router.post(PREFIX + "/operations/misp-retry")
async def misp_retry(request: Request, who: Viewer = Depends(viewer)) -> Response:
    """`meldpunt misp retry --recipient R`: the recipient's failed deliveries queued again."""
    form = await form_checked(request, who)
    _operator(who)
    recipient = str(form.get("recipient") or "")
    if recipient not in {r.id for r in who.server.config.recipients}:
        raise PortalError(404, "not_found")
    queued = await run_in_threadpool(who.server.store.misp_retry_failed, recipient)
    await run_in_threadpool(
        who.server.store.audit,
        username=who.principal.username,
        action="misp-retry",
        collection_id=None,
        objects=queued,
        status=200,
    )
    return secured(RedirectResponse(f"{PREFIX}/operations/?retried={queued}#outbox", status_code=303))
