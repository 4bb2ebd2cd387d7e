"""Mapping files and the converters they may name.

Mappings are data from many hands: a wrong one must be refused when loaded, with the file and
the key in the message, rather than turn a whole feed into quarantine (or worse, into wrong
notifications) at ingest time. Each bad-mapping test starts from the shipped DIVD mapping and
breaks exactly one thing.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector.adapters import converters
from connector.adapters.converters import CONVERTERS
from connector.adapters.mapping import (
    DEFAULT_MAPPINGS_DIR,
    TARGET_FIELDS,
    Mapping,
    MappingError,
    load_mapping,
    load_mappings,
)
from connector.adapters.readers import READERS

# --- helpers ---------------------------------------------------------------------------------

Raw = dict[str, Any]
DIVD_MAPPING = DEFAULT_MAPPINGS_DIR / "divd-nuclei.yaml"


def divd_raw() -> Raw:
    """The shipped DIVD mapping as data, a fresh copy per call so mutations stay local."""
    data = yaml.safe_load(DIVD_MAPPING.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return copy.deepcopy(data)


def write_mapping(
    directory: Path, mutate: Callable[[Raw], None] | None = None, name: str = "bad.yaml"
) -> Path:
    raw = divd_raw()
    if mutate is not None:
        mutate(raw)
    path = directory / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def mapping_problems(path: Path) -> list[str]:
    """load_mapping's problems; the error must name the file, or the operator cannot find it."""
    with pytest.raises(MappingError) as info:
        load_mapping(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    assert info.value.problems
    return info.value.problems


def assert_problem(problems: list[str], key: str, *fragments: str) -> str:
    """Some problem names the key (as `key: ...`) and mentions every fragment."""
    for problem in problems:
        if problem.startswith(f"{key}:") and all(f in problem for f in fragments):
            return problem
    raise AssertionError(f"no problem for key {key!r} with {fragments!r} in {problems!r}")


# --- the shipped mappings --------------------------------------------------------------------


def test_shipped_mappings_load() -> None:
    mappings = load_mappings()
    assert "divd-nuclei" in mappings
    assert all(isinstance(m, Mapping) for m in mappings.values())
    assert load_mappings(DEFAULT_MAPPINGS_DIR) == mappings


def test_shipped_mapping_files_are_named_after_their_format() -> None:
    """`--format X` is looked up by format name; the file name is what an operator sees."""
    for path in sorted(DEFAULT_MAPPINGS_DIR.glob("*.yaml")):
        assert load_mapping(path).format == path.stem


def test_divd_mapping_content() -> None:
    divd = load_mappings()["divd-nuclei"]
    assert divd.reader == "jsonl"
    assert divd.context is not None
    assert divd.context.sidecars() == ["{prefix}.yaml", "{prefix}.md"]
    # DIVD's public case files name neither: the id comes from the case file's name and the
    # TLP from the partner's default (issue #14 item 23).
    assert divd.context.required == ["id"] and "id" in divd.context.from_file_name
    assert {"observed_at", "identifier", "tlp"} <= set(divd.fields)
    assert divd.fields["identifier"].paths() == ["info.classification.cve-id", "template-id"]
    assert divd.fields["tlp"].context == "tlp"
    assert [rule.equals for rule in divd.skip] == [["info"]]


def test_unchanged_copy_of_shipped_mapping_loads(tmp_path: Path) -> None:
    """Guards the helpers: a round trip through YAML alone must not make a mapping invalid."""
    assert load_mapping(write_mapping(tmp_path)) == load_mapping(DIVD_MAPPING)


# --- bad mapping files -----------------------------------------------------------------------


def test_unknown_converter_lists_the_allowed_ones(tmp_path: Path) -> None:
    path = write_mapping(tmp_path, lambda m: m["fields"]["ip"].update(convert="eval"))
    problem = assert_problem(mapping_problems(path), "fields.ip.convert", "unknown converter 'eval'")
    for name in CONVERTERS:
        assert name in problem


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write_mapping(tmp_path, lambda m: m.update(colour="blue"))
    assert mapping_problems(path) == ["colour: unknown key"]


def test_unknown_key_in_a_field_spec(tmp_path: Path) -> None:
    """`covnert:` (a typo) must not silently disable conversion."""
    path = write_mapping(tmp_path, lambda m: m["fields"]["port"].update(covnert="port"))
    assert_problem(mapping_problems(path), "fields.port.covnert", "unknown key")


def test_unknown_reader(tmp_path: Path) -> None:
    path = write_mapping(tmp_path, lambda m: m.update(reader="xml"))
    problem = assert_problem(mapping_problems(path), "reader", "unknown reader 'xml'")
    for name in READERS:
        assert name in problem


def test_field_with_both_from_and_value(tmp_path: Path) -> None:
    path = write_mapping(tmp_path, lambda m: m["fields"]["ip"].update(value="192.0.2.1"))
    assert_problem(mapping_problems(path), "fields.ip", "exactly one of", "from", "value")


def test_field_with_no_source_at_all(tmp_path: Path) -> None:
    path = write_mapping(tmp_path, lambda m: m["fields"].update(port={"convert": "port"}))
    assert_problem(mapping_problems(path), "fields.port", "exactly one of")


def test_unknown_target_field(tmp_path: Path) -> None:
    path = write_mapping(tmp_path, lambda m: m["fields"].update(colour={"value": "blue"}))
    problem = assert_problem(mapping_problems(path), "fields", "unknown target field", "colour")
    for name in TARGET_FIELDS:
        assert name in problem


@pytest.mark.parametrize("needed", ["observed_at", "identifier"])
def test_missing_required_field(tmp_path: Path, needed: str) -> None:
    path = write_mapping(tmp_path, lambda m: m["fields"].pop(needed))
    assert_problem(mapping_problems(path), "fields", f"field {needed!r} must be mapped")


def test_context_used_without_a_context_section(tmp_path: Path) -> None:
    path = write_mapping(tmp_path, lambda m: m.pop("context"))
    problems = mapping_problems(path)
    assert any("fields.case_id" in p and "context" in p for p in problems), problems


def test_missing_required_top_level_key(tmp_path: Path) -> None:
    path = write_mapping(tmp_path, lambda m: m.pop("classification"))
    assert_problem(mapping_problems(path), "classification", "required")


def test_bad_format_name(tmp_path: Path) -> None:
    path = write_mapping(tmp_path, lambda m: m.update(format="DIVD Nuclei"))
    assert_problem(mapping_problems(path), "format")


def test_skip_rule_without_reason(tmp_path: Path) -> None:
    """Skipped rows are reported with the rule's reason: a rule without one is refused."""
    path = write_mapping(tmp_path, lambda m: m["skip"][0].pop("reason"))
    problems = mapping_problems(path)
    assert any(p.startswith("skip") and "reason" in p for p in problems), problems


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- just\n- a list\n", "top level must be a mapping"),
        ("", "top level must be a mapping"),
        ("format: [\n", "expected"),
    ],
    ids=["list", "empty", "broken-yaml"],
)
def test_file_that_is_not_a_mapping(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text, encoding="utf-8")
    problems = mapping_problems(path)
    assert any(fragment in p for p in problems), problems


def test_missing_file(tmp_path: Path) -> None:
    problems = mapping_problems(tmp_path / "absent.yaml")
    assert any("No such file" in p for p in problems)


def test_file_that_is_not_utf8_is_a_mapping_error(tmp_path: Path) -> None:
    """A mapping saved as Latin-1 must be refused with file and reason, not a traceback."""
    path = tmp_path / "latin1.yaml"
    text = DIVD_MAPPING.read_text(encoding="utf-8").replace("title: DIVD", "title: DIVD café")
    path.write_bytes(text.encode("latin-1"))
    mapping_problems(path)


def test_two_files_with_the_same_format(tmp_path: Path) -> None:
    write_mapping(tmp_path, name="a-first.yaml")
    second = write_mapping(tmp_path, lambda m: m.update(title="a copy"), name="b-second.yaml")
    with pytest.raises(MappingError) as info:
        load_mappings(tmp_path)
    assert info.value.source == str(second)
    assert_problem(info.value.problems, "format", "'divd-nuclei'", "defined twice")


def test_one_bad_file_stops_the_whole_load(tmp_path: Path) -> None:
    write_mapping(tmp_path, name="good.yaml")
    bad = write_mapping(tmp_path, lambda m: m.update(reader="xml"), name="other.yaml")
    with pytest.raises(MappingError) as info:
        load_mappings(tmp_path)
    assert info.value.source == str(bad)


# --- converters ------------------------------------------------------------------------------


def test_every_converter_is_a_named_function_of_the_module() -> None:
    """The allow-list must hold only this module's functions, never something imported."""
    for name, func in CONVERTERS.items():
        assert getattr(converters, name) is func


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2001:DB8::0001", "2001:db8::1"),
        (" 192.0.2.10 ", "192.0.2.10"),
        (["198.51.100.7"], "198.51.100.7"),
        ("2001:db8:0:0:0:0:0:1", "2001:db8::1"),
    ],
)
def test_ip_address_canonicalises(raw: Any, expected: str) -> None:
    assert converters.ip_address(raw) == expected


@pytest.mark.parametrize("raw", ["999.1.1.1", "192.0.2", "example.org", "", None, []])
def test_ip_address_rejects(raw: Any) -> None:
    with pytest.raises(ValueError):
        converters.ip_address(raw)


def test_ip_address_error_names_the_value() -> None:
    """The message goes into the quarantine record: it must show what was wrong."""
    with pytest.raises(ValueError, match=re.escape("999.1.1.1")):
        converters.ip_address("999.1.1.1")


@pytest.mark.parametrize(("raw", "expected"), [("443", 443), (8443, 8443), (" 1 ", 1), ("65535", 65535)])
def test_port_accepts(raw: Any, expected: int) -> None:
    assert converters.port(raw) == expected


@pytest.mark.parametrize("raw", [0, "0", 70000, 65536, "abc", -1, "44.3", ""])
def test_port_rejects(raw: Any) -> None:
    with pytest.raises(ValueError, match="invalid port"):
        converters.port(raw)


def test_timestamp_with_offset_converts_to_utc() -> None:
    moment = converters.timestamp("2024-06-12T04:48:41.491404+02:00")
    assert moment == datetime(2024, 6, 12, 2, 48, 41, 491404, tzinfo=UTC)
    assert moment.utcoffset() == timedelta(0)


def test_timestamp_naive_is_treated_as_utc() -> None:
    moment = converters.timestamp("2024-06-12 04:48:41")
    assert moment == datetime(2024, 6, 12, 4, 48, 41, tzinfo=UTC)
    assert moment.utcoffset() == timedelta(0)


def test_timestamp_z_suffix() -> None:
    assert converters.timestamp("2024-06-12T04:48:41Z") == datetime(2024, 6, 12, 4, 48, 41, tzinfo=UTC)


@pytest.mark.parametrize("raw", ["yesterday", "2024-13-01T00:00:00Z", ""])
def test_timestamp_rejects(raw: str) -> None:
    with pytest.raises(ValueError):
        converters.timestamp(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("cve-2024-4577", "CVE-2024-4577"),
        (["cve-2024-4577"], "CVE-2024-4577"),
        (["CVE-2021-44228", "CVE-2021-45046"], "CVE-2021-44228"),
        (" CVE-2024-123456 ", "CVE-2024-123456"),
    ],
)
def test_cve_id(raw: Any, expected: str) -> None:
    assert converters.cve_id(raw) == expected


@pytest.mark.parametrize("raw", ["php-version-detect", "CVE-24-1", "CVE-2024-12", [], None])
def test_cve_id_rejects(raw: Any) -> None:
    with pytest.raises(ValueError):
        converters.cve_id(raw)


@pytest.mark.parametrize(
    "url",
    ["https://192.0.2.10", "https://192.0.2.20:8443/", "https://[2001:db8::1]:8443/x", "192.0.2.10"],
)
def test_url_host_name_is_none_for_ip_literals(url: str) -> None:
    """The address is the observable already; an IP literal is not a host name."""
    assert converters.url_host_name(url) is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTPS://Mail30.Example.NL:8443/owa", "mail30.example.nl"),
        ("https://vpn.example.nl", "vpn.example.nl"),
        ("owa1.example.org", "owa1.example.org"),
    ],
)
def test_url_host_name_lower_cases(url: str, expected: str) -> None:
    assert converters.url_host_name(url) == expected


@pytest.mark.parametrize(("raw", "expected"), [("AS64500", 64500), ("as64500", 64500), (64500, 64500)])
def test_asn(raw: Any, expected: int) -> None:
    assert converters.asn(raw) == expected


def test_asn_zero_means_unknown() -> None:
    assert converters.asn("AS0") is None  # feeds write 0 for "AS unknown": no AS, not a fault


@pytest.mark.parametrize("raw", ["4294967296", "ASx", "-5"])
def test_asn_rejects(raw: str) -> None:
    with pytest.raises(ValueError):
        converters.asn(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("amber", "amber"), ("TLP:AMBER", "amber"), ("white", "clear"), ("amber+strict", "amber+strict")],
)
def test_tlp(raw: str, expected: str) -> None:
    assert converters.tlp(raw) == expected


def test_tlp_rejects_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown TLP level"):
        converters.tlp("purple")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://Bücher.Example/pfad", "http://xn--bcher-kva.example/pfad"),
        ("http://xn--bcher-kva.example/pfad", "http://xn--bcher-kva.example/pfad"),
        ("https://straße.de/", "https://xn--strae-oqa.de/"),  # IDNA 2008, not ss
        ("HTTP://Example.NL./a", "http://example.nl/a"),
        ("http://[2001:DB8::1]:8080/x", "http://[2001:db8::1]:8080/x"),
    ],
)
def test_url_host_is_the_canonical_host_name(raw: str, expected: str) -> None:
    """The URL's host in the form canonical_domain gives every other host name: a Unicode host
    made a url SCO (and a natural key) of its own beside its punycode spelling, and a url
    value with a non-ASCII host is not the RFC 3986 URI STIX 2.1 requires of url:value."""
    assert converters.url(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("::FFFF:192.0.2.10", "::ffff:192.0.2.10"),
        ("::ffff:c000:20a", "::ffff:192.0.2.10"),
        ("0:0:0:0:0:ffff:c000:20a", "::ffff:192.0.2.10"),
        ("::ffff:c000:200/120", "::ffff:192.0.2.0/120"),
    ],
)
def test_an_ipv4_mapped_address_has_one_text_whatever_the_python_version(raw: str, expected: str) -> None:
    """str() of an IPv4-mapped IPv6 address is `::ffff:c000:20a` before Python 3.13 and
    `::ffff:192.0.2.10` from 3.13 (gh-87799): the SCO id and the natural key changed with the
    interpreter, so an upgrade made every such notification and address a second object.
    The canonical text is RFC 5952's (section 5), the dotted form."""
    assert converters.ip_or_network(raw) == expected
    if "/" not in raw:
        assert converters.ip_address(raw) == expected
