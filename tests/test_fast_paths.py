"""The fast paths of ingest (ids, timestamps, addresses, days) must agree exactly with the
standard library's answers: ids are public (recipients key on them), and a differing byte
would be a different object."""

from __future__ import annotations

import ipaddress
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from connector.normalize import canonical_ip
from connector.notification import Classification, Notification
from connector.stix.ids import PROJECT_NAMESPACE, SCO_NAMESPACE, canonical_json, timestamp, uuid5_text
from connector.store.times import moment_ms, ms_to_timestamp, timestamp_to_us


def _reference_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _reference_timestamp(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def test_canonical_json_escapes_every_code_point_as_the_standard_library() -> None:
    for code_point in range(0x110000):
        if 0xD800 <= code_point <= 0xDFFF:
            continue  # lone surrogates are not text an input reader yields
        value = {"value": f"a{chr(code_point)}b"}
        assert canonical_json(value) == _reference_json(value), hex(code_point)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.one_of(st.text(), st.integers(0, 65535), st.lists(st.text(max_size=5), max_size=3)),
        max_size=4,
    )
)
def test_canonical_json_of_id_contributors(value: dict[str, object]) -> None:
    assert canonical_json(value) == _reference_json(value)


@given(st.text(), st.sampled_from([SCO_NAMESPACE, PROJECT_NAMESPACE, uuid.NAMESPACE_URL]))
def test_uuid5_text_is_uuid5(name: str, namespace: uuid.UUID) -> None:
    try:
        expected = str(uuid.uuid5(namespace, name))
    except UnicodeEncodeError:  # a lone surrogate: both must refuse it
        try:
            uuid5_text(namespace, name)
        except UnicodeEncodeError:
            return
        raise AssertionError("uuid5_text accepted text uuid5 refuses") from None
    assert uuid5_text(namespace, name) == expected


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)),
    st.integers(-14 * 60, 14 * 60),
)
def test_timestamp_matches_strftime_in_any_zone(moment: datetime, offset_minutes: int) -> None:
    zoned = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    assert timestamp(moment) == _reference_timestamp(moment)
    assert timestamp(zoned) == _reference_timestamp(zoned)


_OCTETS = st.sampled_from(
    ["0", "00", "01", "1", "9", "10", "99", "100", "199", "249", "250", "255", "256", "012"]
)


@given(st.lists(_OCTETS, min_size=3, max_size=5), st.sampled_from(["", " ", "\t"]))
def test_canonical_ip_fast_path_agrees_with_ipaddress(octets: list[str], pad: str) -> None:
    text = pad + ".".join(octets) + pad
    try:
        expected: str | None = str(ipaddress.ip_address(text.strip()))
    except ValueError:
        expected = None
    try:
        got: str | None = canonical_ip(text)
    except ValueError:
        got = None
    assert got == expected


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)))
def test_notification_day_is_the_utc_date_as_strftime_writes_it(moment: datetime) -> None:
    n = Notification("p", "f", Classification("other", "undetermined", "x"), moment, "amber", ip="192.0.2.1")
    assert n.day == moment.strftime("%Y-%m-%d")
    east = moment.astimezone(timezone(timedelta(hours=13)))
    n.observed_at = east
    assert n.day == moment.strftime("%Y-%m-%d")


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)),
    st.integers(-14 * 60, 14 * 60),
)
def test_observation_milliseconds_match_the_stored_timestamp(moment: datetime, offset_minutes: int) -> None:
    """The record keeps times as milliseconds; rendered back they are the timestamp STIX had."""
    zoned = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    assert moment_ms(zoned) * 1000 == timestamp_to_us(timestamp(zoned))
    assert ms_to_timestamp(moment_ms(zoned)) == timestamp(zoned)


def _slow_domain(value: str) -> str | None:
    """canonical_domain as it was before its ASCII fast path: the IDNA codec, then the labels."""
    import re

    text = value.strip().rstrip(".").lower()
    try:
        text = text.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    label = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
    if not text or len(text) > 253 or not all(label.match(p) for p in text.split(".")):
        return None
    return text


@given(st.text(alphabet="abcXYZ019_-.", max_size=80) | st.from_regex(r"[a-z]{1,70}(\.[a-z0-9-]{0,70}){0,4}"))
def test_canonical_domain_fast_path_agrees_with_the_idna_codec(value: str) -> None:
    """ASCII host names skip the IDNA codec: the answer (a name, or a refusal) must not change."""
    from connector.normalize import canonical_domain

    try:
        got: str | None = canonical_domain(value)
    except ValueError:
        got = None
    assert got == _slow_domain(value)
