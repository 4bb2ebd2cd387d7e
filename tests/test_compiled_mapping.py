"""A mapping compiled to code (connector/adapters/compiled.py) stays data.

Mapping files come from many hands, and column names come from the input itself: the
generated functions must read any of them as a value, never as code, and must keep the
engine's rules (spec order decides which fault rejects a record, absent versus empty,
withheld values) for every kind of field: flat columns, nested paths, several paths, constants.
"""

from __future__ import annotations

import io
from typing import Any

import pytest

from connector.adapters.engine import FileContext, MappedAdapter, RowRejected
from connector.adapters.mapping import Mapping
from connector.adapters.readers import RawRecord

HOSTILE = "x'); raise SystemExit('pwned') #\n\"\"\"{}"


def adapter(fields: dict[str, Any], evidence: dict[str, Any] | None = None, **options: Any) -> MappedAdapter:
    raw = {
        "format": "compiled-test",
        "title": "compiled",
        "reader": "jsonl",
        "classification": {"taxonomy": "vulnerable", "type": "vulnerable-system"},
        "fields": {"identifier": {"value": "open-test"}, **fields},
        "evidence": evidence or {},
        **options,
    }
    return MappedAdapter(Mapping.model_validate(raw), "partner", FileContext({}), "t.jsonl")


def record(data: dict[str, Any]) -> RawRecord:
    return RawRecord(line=7, data=data, raw="{}")


def test_column_names_that_look_like_code_are_read_as_names() -> None:
    a = adapter(
        {
            "ip": {"from": HOSTILE, "convert": "ip_address", "required": True},
            "observed_at": {"from": "time", "convert": "timestamp", "required": True},
        },
        evidence={HOSTILE: HOSTILE},
        keep_unmapped=True,
    )
    n = a.notification(record({HOSTILE: "192.0.2.7", "time": "2024-06-01T10:00:00Z", "other": "kept"}))
    assert n.ip == "192.0.2.7"
    assert n.evidence == {HOSTILE: "192.0.2.7", "unmapped": {"other": "kept"}}
    # The functions' code names only generated names: the mapping's text is in their namespace.
    read_fields = a._classify._default[1]
    for code in (read_fields.__code__, a._read_evidence.__code__):
        assert all(name.isidentifier() and HOSTILE not in name for name in code.co_names)
        assert not any(isinstance(c, str) and "SystemExit" in c for c in code.co_consts)
    with pytest.raises(RowRejected, match=r"ip: missing \(x'\); raise SystemExit"):
        a.notification(record({"time": "2024-06-01T10:00:00Z"}))


def test_the_first_faulty_field_in_spec_order_rejects_the_record() -> None:
    fields = {
        "port": {"from": "port", "convert": "port"},
        "ip": {"from": "ip", "convert": "ip_address"},
        "observed_at": {"from": "time", "convert": "timestamp", "required": True},
    }
    bad = {"port": "99999", "ip": "not-an-ip", "time": "2024-06-01T10:00:00Z"}
    with pytest.raises(RowRejected, match=r"^port: invalid port '99999' \(from port\)$"):
        adapter(fields).notification(record(bad))
    reordered = {"ip": fields["ip"], "port": fields["port"], "observed_at": fields["observed_at"]}
    with pytest.raises(RowRejected, match=r"^ip: invalid IP address 'not-an-ip' \(from ip\)$"):
        adapter(reordered).notification(record(bad))


@pytest.mark.parametrize("absent", [None, "", [], "missing"])
def test_absent_or_empty_optional_fields_are_none_and_required_ones_reject(absent: Any) -> None:
    a = adapter(
        {
            "ip": {"from": "ip", "convert": "ip_address", "required": True},
            "hostname": {"from": "host", "convert": "domain"},
            "observed_at": {"from": "time", "convert": "timestamp", "required": True},
        }
    )
    data: dict[str, Any] = {"ip": "192.0.2.1", "time": "2024-06-01T10:00:00Z"}
    if absent != "missing":
        data["host"] = absent
    assert a.notification(record(data)).hostname is None
    without_ip = {k: v for k, v in data.items() if k != "ip"}
    if absent != "missing":
        without_ip["ip"] = absent
    with pytest.raises(RowRejected, match=r"^ip: missing \(ip absent or empty\)$"):
        a.notification(record(without_ip))


def test_nested_paths_several_paths_and_constants() -> None:
    a = adapter(
        {
            "ip": {"from": "host.address", "convert": "ip_address", "required": True},
            "hostname": {"from": ["names.first", "names.second"], "convert": "domain"},
            "severity": {"value": "HIGH", "convert": "lower"},
            "observed_at": {"from": "time", "convert": "timestamp", "required": True},
        },
        evidence={"banner": "service.banner", "port": {"from": "service.port", "convert": "port"}},
    )
    n = a.notification(
        record(
            {
                "host": {"address": "2001:DB8::1"},
                "names": {"first": "", "second": "Example.NL."},
                "service": {"banner": "nginx", "port": "443"},
                "time": "2024-06-01T10:00:00Z",
            }
        )
    )
    assert (n.ip, n.hostname, n.severity) == ("2001:db8::1", "example.nl", "high")
    assert n.evidence == {"banner": "nginx", "port": 443}
    with pytest.raises(RowRejected, match=r"^evidence port: not usable \(value withheld\)$"):
        a.notification(
            record(
                {"host": {"address": "192.0.2.1"}, "service": {"port": "x"}, "time": "2024-06-01T10:00:00Z"}
            )
        )


def test_a_mapping_that_keeps_no_raw_lines_quotes_no_value() -> None:
    a = adapter(
        {
            "email": {"from": "mail", "convert": "email"},
            "observed_at": {"from": "time", "convert": "timestamp", "required": True},
        },
        keep_raw_in_quarantine=False,
    )
    with pytest.raises(RowRejected) as info:
        a.notification(record({"mail": "secret-password-123", "time": "2024-06-01T10:00:00Z"}))
    assert str(info.value) == "email: not usable (value withheld: personal data) (from mail)"


def test_rows_of_a_real_reader_map_the_same_through_the_compiled_functions() -> None:
    """The JSON lines reader and the engine together, as an ingest runs them."""
    a = adapter(
        {
            "ip": {"from": "ip", "convert": "ip_address", "required": True},
            "port": {"from": "port", "convert": "port"},
            "observed_at": {"from": "time", "convert": "timestamp", "required": True},
        },
        keep_unmapped=True,
    )
    stream = io.BytesIO(b'{"ip": "192.0.2.9", "port": 8443, "time": "2024-06-01T10:00:00Z", "x": 1}\n')
    (row,) = list(a.rows(stream))
    assert isinstance(row, RawRecord)
    n = a.notification(row)
    assert (n.ip, n.port, n.evidence) == ("192.0.2.9", 8443, {"unmapped": {"x": 1}})
