"""The DIVD adapter end to end into the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

from connector.collections import recipient_collection_id
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.store import Store, VersionFilter
from tests.conftest import DIVD_SCAN
from tests.record_view import notification_rows

CASE = DIVD_SCAN.parent / "DIVD-2024-00012.yaml"


def expected_lines() -> dict[str, set[int]]:
    """Classify the sample's lines independently of the adapter."""
    good, info, faulty, blank = set(), set(), set(), set()
    for number, line in enumerate(DIVD_SCAN.read_text().splitlines(), start=1):
        if not line.strip():
            blank.add(number)
            continue
        try:
            record = json.loads(line)
        except ValueError:
            faulty.add(number)
            continue
        if record["info"]["severity"] == "info":
            info.add(number)
        elif not record.get("ip") or not all(
            p.isdigit() and int(p) < 256 for p in record["ip"].split(".") if "." in record["ip"]
        ):
            faulty.add(number)
        else:
            good.add(number)
    return {"good": good, "info": info, "faulty": faulty, "blank": blank}


def copy_case(tmp_path: Path, lines: list[str]) -> Path:
    scan = tmp_path / "DIVD-2024-00012.nuclei.jsonl"
    scan.write_text("\n".join(lines) + "\n")
    (tmp_path / CASE.name).write_text(CASE.read_text())
    return scan


def test_sample_counts_and_quarantine(ingestor: Ingestor, store: Store) -> None:
    lines = expected_lines()
    summary = ingestor.run("divd", "divd-nuclei", [DIVD_SCAN])
    counts = summary.counts
    assert summary.ok
    assert counts["read"] == sum(len(v) for v in lines.values())
    assert counts["notifications"] == counts["new"] == len(lines["good"])
    assert counts["quarantined"] == len(lines["faulty"]) == 4
    assert counts["skipped"] == len(lines["info"]) + len(lines["blank"])
    assert counts["routed"] + counts["unrouted"] == counts["new"]
    quarantined = store.run_rows(summary.run_id, "quarantined")
    assert {r["line"] for r in quarantined} == lines["faulty"]
    reasons = {r["line"]: r["reason"] for r in quarantined}
    assert "JSON" in reasons[8]
    assert "ip: missing" in reasons[13]
    assert "999.12.1.4" in reasons[16]
    assert "log output" in reasons[23]
    run = store.run(summary.run_id)
    assert run is not None and run["status"] == "done"
    assert run["counts"]["quarantined"] == 4


def test_unrouted_are_listed_not_dropped(ingestor: Ingestor, store: Store) -> None:
    summary = ingestor.run("divd", "divd-nuclei", [DIVD_SCAN])
    unrouted = store.unrouted(summary.run_id)
    assert summary.counts["unrouted"] == len(unrouted) == 3
    assert {n["observable"] for n in unrouted} == {"203.0.113.5:443", "203.0.113.6:443", "203.0.113.7:443"}


def test_reingesting_the_same_file_adds_nothing(ingestor: Ingestor, store: Store) -> None:
    ingestor.run("divd", "divd-nuclei", [DIVD_SCAN])
    zcert = recipient_collection_id("zcert")
    before = CollectionView(store).page(zcert, after=None, limit=10_000, versions=VersionFilter(all=True))
    again = ingestor.run("divd", "divd-nuclei", [DIVD_SCAN])
    assert again.counts["new"] == again.counts["updated"] == 0
    assert again.counts["unchanged"] == again.counts["notifications"]
    after = CollectionView(store).page(zcert, after=None, limit=10_000, versions=VersionFilter(all=True))
    assert after == before


def test_a_new_observation_updates_count_and_versions_the_sighting(
    ingestor: Ingestor, store: Store, tmp_path: Path
) -> None:
    first = DIVD_SCAN.read_text().splitlines()[0]
    ingestor.run("divd", "divd-nuclei", [copy_case(tmp_path, [first])])
    later = first.replace("2024-06-12T04:48:41.491404+02:00", "2024-06-12T09:00:00.000000+02:00")
    summary = ingestor.run("divd", "divd-nuclei", [copy_case(tmp_path, [later])])
    assert summary.counts["updated"] == 1 and summary.counts["new"] == 0
    zcert = recipient_collection_id("zcert")
    all_versions = [
        json.loads(m.body)
        for m in CollectionView(store).page(zcert, after=None, limit=1000, versions=VersionFilter(all=True))
        if m.body.startswith('{"type":"sighting"')
    ]
    assert len(all_versions) == 2
    assert len({s["id"] for s in all_versions}) == 1
    old, new = sorted(all_versions, key=lambda s: s["modified"])
    assert (old["count"], new["count"]) == (1, 2)
    assert new["last_seen"] == "2024-06-12T07:00:00.000Z"
    assert new["first_seen"] == old["first_seen"] == "2024-06-12T02:48:41.491Z"
    latest = [
        json.loads(m.body)
        for m in CollectionView(store).page(zcert, after=None, limit=1000, types=("sighting",))
    ]
    assert [s["count"] for s in latest] == [2]


def test_a_later_day_is_a_new_version_of_the_same_notification(
    ingestor: Ingestor, store: Store, tmp_path: Path
) -> None:
    """The same host seen again by the next day's scan is the same occurrence, seen again: one
    sighting whose count, last_seen and modified move on, not a second notification (and a
    second copy of its evidence) per day. Its id keeps the day it was first seen."""
    first = DIVD_SCAN.read_text().splitlines()[0]
    ingestor.run("divd", "divd-nuclei", [copy_case(tmp_path, [first])])
    [before] = notification_rows(store)
    next_day = first.replace("2024-06-12T04:48:41", "2024-06-13T04:48:41")
    summary = ingestor.run("divd", "divd-nuclei", [copy_case(tmp_path, [next_day])])
    assert (summary.counts["new"], summary.counts["updated"]) == (0, 1)
    [after] = notification_rows(store)
    assert (after["pk"], after["sighting_id"], after["day"]) == (
        before["pk"],
        before["sighting_id"],
        "2024-06-12",
    )
    assert (after["count"], after["last_seen"] - after["first_seen"]) == (2, 86_400_000)
    view = CollectionView(store)
    [sighting] = [
        m
        for m in view.page(
            recipient_collection_id(before["recipients"][0]),
            after=None,
            limit=100,
            ids=(before["sighting_id"],),
        )
    ]
    body = json.loads(sighting.body)
    assert (body["count"], body["first_seen"][:10], body["last_seen"][:10]) == (2, "2024-06-12", "2024-06-13")
    every = view.page(
        recipient_collection_id(before["recipients"][0]),
        after=None,
        limit=100,
        ids=(before["sighting_id"],),
        versions=VersionFilter(all=True),
    )
    assert [json.loads(m.body)["count"] for m in every] == [1, 2]


def test_missing_case_file_fails_the_input_not_the_run(
    ingestor: Ingestor, store: Store, tmp_path: Path
) -> None:
    lonely = tmp_path / "DIVD-2099-00001.nuclei.jsonl"
    lonely.write_text(DIVD_SCAN.read_text())
    summary = ingestor.run("divd", "divd-nuclei", [lonely, DIVD_SCAN])
    assert not summary.ok
    assert "DIVD-2099-00001.yaml" in summary.input_errors[0]
    assert summary.counts["new"] == 26  # the good file beside it went in
    assert store.run(summary.run_id)["status"] == "failed"  # type: ignore[index]


def test_a_case_file_that_cannot_be_used_is_said_on_one_line(ingestor: Ingestor, tmp_path: Path) -> None:
    """A new operator's review: a YAML fault showed only "while parsing a flow sequence" (where
    it is was on the lines the run's table leaves out), and a directory was "not found"."""
    scan = tmp_path / "DIVD-2024-00012.nuclei.jsonl"
    scan.write_text(DIVD_SCAN.read_text())
    broken = tmp_path / "DIVD-2024-00012.yaml"
    broken.write_text(CASE.read_text() + "\nextra: [unclosed\n")
    directory = tmp_path / "a-directory"
    directory.mkdir()
    said = []
    for case in (broken, directory):
        summary = ingestor.run("divd", "divd-nuclei", [scan], context_file=case)
        assert not summary.ok
        said += summary.input_errors
    assert "not valid YAML" in said[0] and "line" in said[0] and "column" in said[0]
    assert "\n" not in said[0]
    assert "cannot be read: Is a directory" in said[1]
