"""A client that keeps `added_after` to the millisecond loses nothing (issue #14, item 19).

The server stamps date_added, X-TAXII-Date-Added-First/-Last and the manifest in
microseconds, and an ingest stamps its objects a microsecond apart, so many share one
millisecond. A client that keeps the last X-TAXII-Date-Added-Last truncated to milliseconds
(the stix2 library's millisecond precision, as OpenCTI's tooling does) asks again from a
moment at or before the last object it saw: it is sent some objects twice, never none.
Polled here the way OpenCTI's taxii2 connector polls: a first page with added_after, then
`next` alone, through taxii2-client; on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import requests
from stix2.utils import parse_into_datetime
from taxii2client.v21 import Collection

from connector.ingest import Ingestor
from tests.conftest import DIVD_SCAN, RunningServer, password_for
from tests.test_taxii_read import _largest_reader, manifest_dates, session_for

Json = dict[str, Any]


def _cycle(coll: Collection, headers: list[Any], added_after: Any) -> tuple[list[Json], Any]:
    """One polling run: (objects received, the millisecond added_after for the next run)."""
    filters: dict[str, Any] = {"limit": 4}
    if added_after is not None:
        filters["added_after"] = added_after
    received: list[Json] = []
    last = None
    while True:
        envelope = coll.get_objects(**filters)
        received.extend(envelope.get("objects", []))
        last = headers[-1].get("X-TAXII-Date-Added-Last") or last
        if not envelope.get("more"):
            break
        filters.pop("added_after", None)  # as OpenCTI: `next` alone
        filters["next"] = envelope["next"]
    if last is None:
        return received, added_after
    return received, parse_into_datetime(last, precision="millisecond")  # truncated, never rounded up


def _later_day_of_the_sample(tmp_path: Path) -> Path:
    """The DIVD sample observed a day later: new versions of its notifications' objects."""
    scan = tmp_path / DIVD_SCAN.name
    scan.write_text(DIVD_SCAN.read_text().replace("2024-06-12T", "2024-06-13T"))
    case = DIVD_SCAN.parent / "DIVD-2024-00012.yaml"
    (tmp_path / case.name).write_text(case.read_text())
    return scan


def test_added_after_truncated_to_milliseconds_loses_no_object(
    taxii: RunningServer, ingestor: Ingestor, tmp_path: Path
) -> None:
    u, cid = _largest_reader(taxii)
    s = session_for(u.username)
    first_dates = manifest_dates(s, taxii, cid)
    per_ms = Counter(d[:23] for d in first_dates.values())  # YYYY-MM-DDTHH:MM:SS.mmm
    assert per_ms.most_common(1)[0][1] >= 2, "no two objects share a millisecond: nothing is tested"

    headers: list[Any] = []
    with Collection(taxii.collection_url(cid), user=u.username, password=password_for(u.username)) as coll:
        session: requests.Session = coll._conn.session
        session.hooks["response"].append(lambda resp, *_a, **_k: headers.append(resp.headers))
        seen, since = _cycle(coll, headers, None)
        assert since is not None and since.microsecond % 1000 == 0
        summary = ingestor.run("divd", "divd-nuclei", [_later_day_of_the_sample(tmp_path)])
        assert summary.ok and summary.counts["updated"] > 0
        more, since = _cycle(coll, headers, since)
        seen += more
        last_run, _ = _cycle(coll, headers, since)  # nothing new: at most the last millisecond again

    everything = manifest_dates(s, taxii, cid)
    assert any(everything[i] != first_dates.get(i) for i in everything)  # new versions, later
    got = {(o["id"], o.get("modified") or o.get("created")) for o in seen}
    assert {i for i, _ in got} >= set(everything), "an object was lost"
    latest = (
        session_for(u.username)
        .get(taxii.collection_url(cid) + "objects/", params={"limit": 1000})
        .json()["objects"]
    )
    assert {(o["id"], o.get("modified") or o.get("created")) for o in latest} <= got
    # Duplicates are the price: what shared the boundary millisecond came twice.
    assert all(o["id"] in {x["id"] for x in seen} for o in last_run)
