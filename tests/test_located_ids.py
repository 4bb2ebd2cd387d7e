"""Located ids (connector/stix/ids.py; migration 0013).

A notification's own objects (sighting, observed-data, indicator) get ids that carry its
subject's digest, so the store finds the notification of an id through the subject index and
keeps no index of the ids. What must hold: the subject comes back out of the id exactly; the id
is a UUIDv4 as STIX asks of SDOs and SROs; a new store keeps no id rows and still finds every
object by id (TAXII match[id], `route explain`, feedback); a store of the code before keeps
serving the UUIDv5 ids it served, finds them by id, and the notifications it gets after the
upgrade have located ids beside them; the downgrade refuses while located ids exist.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect
from stix2validator import ValidationOptions, validate_instance

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows, recipient_collection_id
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.render.stix import notification_of, render, shape
from connector.stix.build import notification_ids
from connector.stix.ids import located_id, located_subject, project_id
from connector.store import Store, VersionFilter
from connector.store.records import digest
from tests.conftest import DIVD_SCAN, divd_scan_as
from tests.test_membership_layout import alembic
from tests.test_migration_record import legacy_config
from tests.test_migration_versions import OLD, load_0010

KEY = ("divd", "vulnerable/vulnerable-system", "CVE-2024-0001", "192.0.2.10:443", "2024-06-15")


@given(subject=st.integers(-(1 << 63), (1 << 63) - 1), day=st.sampled_from(["2024-06-15", "2025-01-01"]))
def test_the_subject_comes_back_out_of_the_id(subject: int, day: str) -> None:
    for stix_type in ("sighting", "observed-data", "indicator"):
        ident = located_id(stix_type, subject, *KEY[:4], day)
        found = uuid.UUID(ident.partition("--")[2])
        assert found.version == 4 and found.variant == uuid.RFC_4122
        assert located_subject(ident) == subject


def test_ids_of_other_kinds_carry_no_subject() -> None:
    assert located_subject(project_id("sighting", *KEY)) is None  # UUIDv5: stored before 0013
    for text in ("sighting--not-a-uuid", "sighting", "", "sighting--" + "0" * 36):
        assert located_subject(text) is None


def test_ids_differ_by_type_and_day_and_subject() -> None:
    ids = {
        *notification_ids(KEY),
        *notification_ids((*KEY[:4], "2024-06-16")),
        *notification_ids((*KEY[:3], "192.0.2.11:443", KEY[4])),
    }
    assert len(ids) == 9
    assert notification_ids(KEY, legacy=True) == (
        project_id("sighting", *KEY),
        project_id("observed-data", *KEY),
        project_id("indicator", *KEY),
    )


def _ingest_divd(store: Store, tmp_path: Path, month: str = "06", hosts: str = "192.0.2.1") -> None:
    """The DIVD sample, its dates in `month`, its hosts 192.0.2.1x moved to `hosts`x."""
    config = legacy_config()
    store.sync_collections(collection_rows(config))
    scan = divd_scan_as(
        tmp_path, DIVD_SCAN.read_text().replace("2024-06-1", f"2024-{month}-1").replace("192.0.2.1", hosts)
    )
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [scan])


def _count(store: Store, statement: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql(statement).scalar() or 0)


def _own_objects(view: CollectionView, collection: str) -> list[Any]:
    every = view.page(collection, after=None, limit=100_000, versions=VersionFilter(all=True))
    return [m for m in every if m.stix_id.startswith(("sighting--", "observed-data--", "indicator--"))]


def test_a_new_store_keeps_no_id_rows_and_finds_every_object_by_id(store: Store, tmp_path: Path) -> None:
    _ingest_divd(store, tmp_path)
    assert _count(store, "SELECT count(*) FROM notifications") > 5
    assert _count(store, "SELECT count(*) FROM notification_ids") == 0
    view = CollectionView(store)
    zcert = recipient_collection_id("zcert")
    own = _own_objects(view, zcert)
    assert own and all(located_subject(m.stix_id) is not None for m in own)
    for member in own:
        found = view.page(
            zcert, after=None, limit=100, ids=(member.stix_id,), versions=VersionFilter(all=True)
        )
        assert member.stix_id in {m.stix_id for m in found}
        assert {m.stix_id for m in found} == {member.stix_id}
        body = json.loads(member.body)
        assert validate_instance(body, ValidationOptions(version="2.1")).is_valid, member.stix_id


def test_an_id_whose_bits_name_a_subject_but_no_object_finds_nothing(store: Store, tmp_path: Path) -> None:
    """Another UUIDv4 with a stored subject's bits (anyone can make one): not that notification's."""
    _ingest_divd(store, tmp_path)
    zcert = recipient_collection_id("zcert")
    view = CollectionView(store)
    sighting = next(m.stix_id for m in _own_objects(view, zcert) if m.stix_id.startswith("sighting--"))
    subject = located_subject(sighting)
    assert subject is not None
    forged = located_id("sighting", subject, "someone", "else", "entirely", "x", "y")
    assert located_subject(forged) == subject and forged != sighting
    assert view.page(zcert, after=None, limit=100, ids=(forged,)) == []
    assert view.remove(zcert, forged, VersionFilter(all=True)) == 0


def test_a_store_of_the_code_before_keeps_its_ids_and_gets_located_ones_beside(
    store_url: str, tmp_path: Path
) -> None:
    load_0010(store_url)  # written by 8a88171 (migration 0010): UUIDv5 ids, notification_ids rows
    store = Store.open(store_url)
    try:
        assert _count(store, "SELECT count(*) FROM notifications WHERE located_ids IS NOT NULL") == 0
        old_rows = _count(store, "SELECT count(*) FROM notification_ids")
        assert old_rows > 0
        zcert = recipient_collection_id("zcert")
        served = {m[1] for m in OLD["served"][zcert]["all"]}
        view = CollectionView(store)
        before = {m.stix_id for m in _own_objects(view, zcert)}
        assert before and before <= served and all(located_subject(i) is None for i in before)
        for ident in before:
            assert {m.stix_id for m in view.page(zcert, after=None, limit=100, ids=(ident,))} == {ident}
        # shape() of an old notification still names the UUIDv5 ids it renders
        with store.reading() as reader:
            partners = reader.partner_names()
            checked = 0
            for n, v, kind in store.iter_notifications():
                if v.renderer == 0:
                    continue
                evidence = json.loads(reader.evidence([v.evidence_of(n)])[v.evidence_of(n)])
                objects = render(n, v, kind, evidence, partners[kind.partner])
                expected = shape(notification_of(n, kind, evidence))
                assert expected.own == tuple(digest(o.obj["id"]) for o in objects if not o.shared)
                checked += 1
            assert checked > 0
        _ingest_divd(store, tmp_path, month="09", hosts="192.0.2.2")  # other hosts: new notifications
        assert _count(store, "SELECT count(*) FROM notifications WHERE located_ids IS NOT NULL") > 0
        assert _count(store, "SELECT count(*) FROM notification_ids") == old_rows
        after = {m.stix_id for m in _own_objects(view, zcert)}
        new = after - before
        assert new and all(located_subject(i) is not None for i in new)
        for ident in sorted(after):
            assert {m.stix_id for m in view.page(zcert, after=None, limit=100, ids=(ident,))} == {ident}
    finally:
        store.close()


def test_the_downgrade_refuses_while_located_ids_exist(store_url: str, tmp_path: Path) -> None:
    store = Store.open(store_url)
    try:
        _ingest_divd(store, tmp_path)
    finally:
        store.close()
    with pytest.raises(RuntimeError, match="notifications have located ids"):
        alembic(store_url, "downgrade", "0012")
    engine = create_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "DELETE FROM version_blocks"
                if inspect(conn).has_table("version_blocks")
                else "DELETE FROM notification_versions"
            )
            conn.exec_driver_sql("DELETE FROM observations")
            if inspect(conn).has_table("notification_heads"):  # SQLite went down 0014 already
                conn.exec_driver_sql("DELETE FROM notification_heads")
            conn.exec_driver_sql("DELETE FROM notifications")
    finally:
        engine.dispose()
    alembic(store_url, "downgrade", "0012")
    alembic(store_url, "upgrade", "head")
