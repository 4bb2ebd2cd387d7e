"""The deployment configuration: the example loads, and every kind of mistake is refused by key.

A clearinghouse that starts with a typo in a constituency either leaves an organisation
uninformed or sends its weaknesses to somebody else, so each test below starts from the
example deployment, breaks exactly one thing, and checks that the error names the key path
(the way an operator would find it in the file) and what is wrong with it.
"""

from __future__ import annotations

import copy
import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector.config import (
    CONFIG_ENV,
    DATABASE_ENV,
    Config,
    ConfigError,
    load_config,
    parse_config,
)
from tests.conftest import SAMPLE_CONFIG

# --- helpers ---------------------------------------------------------------------------------

Raw = dict[str, Any]


def _example_raw() -> Raw:
    """The example YAML as plain data: each test mutates a deep copy of this, never the file."""
    with SAMPLE_CONFIG.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, dict)
    return data


_EXAMPLE = _example_raw()


def beside(config_file: Path, sqlite_url: str) -> str:
    """The URL load_config makes of a relative SQLite URL in `config_file`: the path taken
    relative to the file's directory (README, Configuration), written out here by hand."""
    relative = sqlite_url.removeprefix("sqlite:///")
    assert relative != sqlite_url and not relative.startswith("/"), sqlite_url
    return "sqlite:///" + os.path.abspath(config_file.parent / relative)


def example() -> Raw:
    """A private copy, so one test's mutation can never leak into another."""
    return copy.deepcopy(_EXAMPLE)


def index_of(raw: Raw, section: str, ident: str, key: str = "id") -> int:
    """Position of an item by id, so tests do not depend on the example's order."""
    for i, item in enumerate(raw[section]):
        if item.get(key) == ident:
            return i
    raise AssertionError(f"{section} has no {key} {ident!r}")


def recipient(raw: Raw, ident: str) -> dict[str, Any]:
    return raw["recipients"][index_of(raw, "recipients", ident)]


def user(raw: Raw, username: str) -> dict[str, Any]:
    return raw["users"][index_of(raw, "users", username, key="username")]


def problems_of(raw: Raw) -> list[str]:
    """The problems parse_config reports; fails the test when it accepts the data."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="test.yaml")
    assert info.value.source == "test.yaml"
    assert info.value.problems, "a ConfigError must say what is wrong"
    return info.value.problems


def assert_problem(problems: list[str], path: str, *fragments: str) -> str:
    """Some problem starts with the key path and mentions every fragment; returns it."""
    for problem in problems:
        if problem.startswith(path) and all(f in problem for f in fragments):
            return problem
    raise AssertionError(f"no problem at {path!r} mentioning {fragments!r} in {problems!r}")


def write(tmp_path: Path, text: str | bytes, name: str = "meldpunt.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def new_recipient(ident: str, **extra: Any) -> dict[str, Any]:
    """A minimal valid recipient that claims nothing, so only the tested rule can fire."""
    return {"id": ident, "name": ident.title(), "kind": "organisation", **extra}


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own MELDPUNT_* variables must not change what these tests load."""
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    monkeypatch.delenv(CONFIG_ENV, raising=False)


# --- the example deployment ------------------------------------------------------------------


def test_example_config_loads() -> None:
    config = load_config(SAMPLE_CONFIG)
    assert isinstance(config, Config)
    assert {r.id for r in config.recipients} == {"zcert", "ziekenhuis-noord", "ibd", "gemeente-voorbeeld"}
    assert [p.id for p in config.partners] == ["divd", "researcher-1", "shadowserver-foundation"]
    assert config.recipient("ziekenhuis-noord").parent == "zcert"
    assert config.database == beside(SAMPLE_CONFIG, _EXAMPLE["database"])
    assert all(u.password_hash.startswith("$argon2") for u in config.users)


def test_example_nests_a_more_specific_prefix() -> None:
    """The example relies on a nested claim being legal: the hospital's /28 inside Z-CERT's /25."""
    config = parse_config(example())
    outer = ipaddress.ip_network("192.0.2.0/25")
    inner = ipaddress.ip_network("192.0.2.16/28")
    assert outer in config.recipient("zcert").constituency.networks
    assert inner in config.recipient("ziekenhuis-noord").constituency.networks
    assert inner.subnet_of(outer)  # type: ignore[arg-type]


def test_parse_config_of_example_dict_is_equal_to_load_config() -> None:
    """Equal but for the store's path, which only a file has something to be relative to."""
    raw = example()
    raw["database"] = beside(SAMPLE_CONFIG, raw["database"])
    assert parse_config(raw) == load_config(SAMPLE_CONFIG)


# --- unknown keys ----------------------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    raw = example()
    raw["colour"] = "blue"
    problems = problems_of(raw)
    assert problems == ["colour: unknown key"]


def test_unknown_key_inside_a_recipient_names_the_recipient() -> None:
    raw = example()
    i = index_of(raw, "recipients", "zcert")
    raw["recipients"][i]["colour"] = "blue"
    problems = problems_of(raw)
    assert len(problems) == 1
    assert_problem(problems, f"recipients[{i}](zcert).colour", "unknown key")


def test_unknown_key_inside_a_constituency() -> None:
    """A misspelt `network:` would otherwise silently claim nothing."""
    raw = example()
    i = index_of(raw, "recipients", "ibd")
    raw["recipients"][i]["constituency"]["network"] = ["203.0.113.0/24"]
    assert_problem(problems_of(raw), f"recipients[{i}](ibd).constituency.network", "unknown key")


# --- networks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "fragment"),
    [
        ("192.0.2.300/24", "does not appear to be an IPv4 or IPv6 network"),
        ("192.0.2.1/24", "has host bits set"),
        ("2001:db8::g/48", "does not appear to be an IPv4 or IPv6 network"),
        ("2001:db8:10::1/48", "has host bits set"),
        ("2001:db8:10::/129", "does not appear to be an IPv4 or IPv6 network"),
    ],
    ids=["ipv4-octet-300", "ipv4-host-bits", "ipv6-bad-digit", "ipv6-host-bits", "ipv6-len-129"],
)
def test_bad_network_is_refused(network: str, fragment: str) -> None:
    raw = example()
    i = index_of(raw, "recipients", "zcert")
    raw["recipients"][i]["constituency"]["networks"] = [network]
    problems = problems_of(raw)
    assert len(problems) == 1
    assert_problem(
        problems, f"recipients[{i}](zcert).constituency.networks", f"invalid network {network!r}", fragment
    )


def test_every_bad_network_of_a_list_is_reported_at_once() -> None:
    """Only the first was, without its place: an operator fixed one and met the next."""
    raw = example()
    i = index_of(raw, "recipients", "zcert")
    raw["recipients"][i]["constituency"]["networks"] = ["192.0.2.0/25", "192.0.2.300/24", "198.51.100.1/24"]
    [problem] = [p for p in problems_of(raw) if "constituency.networks" in p]
    assert "item 1: invalid network '192.0.2.300/24'" in problem
    assert "item 2: invalid network '198.51.100.1/24'" in problem


def test_a_yes_no_is_not_an_as_number() -> None:
    """YAML reads `yes` as a boolean, and pydantic took True for AS1."""
    raw = example()
    i = index_of(raw, "recipients", "zcert")
    raw["recipients"][i]["constituency"]["asns"] = [64500, True]
    assert_problem(
        problems_of(raw), f"recipients[{i}](zcert).constituency.asns", "must be numbers, not yes/no", "item 1"
    )


def test_invalid_domain_is_refused() -> None:
    raw = example()
    i = index_of(raw, "recipients", "ibd")
    raw["recipients"][i]["constituency"]["domains"] = ["-bad-.example"]
    assert_problem(
        problems_of(raw), f"recipients[{i}](ibd).constituency.domains", "invalid domain '-bad-.example'"
    )


# --- recipients: ids and parents -------------------------------------------------------------


def test_duplicate_recipient_id() -> None:
    raw = example()
    raw["recipients"].append(new_recipient("zcert"))
    first = index_of(raw, "recipients", "zcert")
    dup = len(raw["recipients"]) - 1
    problems = problems_of(raw)
    assert len(problems) == 1
    assert_problem(problems, f"recipients[{dup}].id", "duplicate id 'zcert'", f"first at recipients[{first}]")


def test_unknown_parent() -> None:
    raw = example()
    i = index_of(raw, "recipients", "ziekenhuis-noord")
    raw["recipients"][i]["parent"] = "no-such-cert"
    problems = problems_of(raw)
    assert len(problems) == 1
    assert_problem(problems, f"recipients[{i}](ziekenhuis-noord).parent", "unknown recipient 'no-such-cert'")


def test_recipient_that_is_its_own_parent() -> None:
    raw = example()
    i = index_of(raw, "recipients", "ibd")
    raw["recipients"][i]["parent"] = "ibd"
    assert_problem(problems_of(raw), f"recipients[{i}](ibd).parent", "its own parent")


def test_parent_cycle_of_two() -> None:
    """zcert -> ibd -> zcert: each parent exists, so only the cycle check can catch it."""
    raw = example()
    recipient(raw, "zcert")["parent"] = "ibd"
    recipient(raw, "ibd")["parent"] = "zcert"
    problems = problems_of(raw)
    assert len(problems) == 1
    cycle = assert_problem(problems, "recipients", "parent cycle")
    assert "zcert" in cycle
    assert "ibd" in cycle


def test_parent_cycle_through_a_chain_of_three() -> None:
    raw = example()
    raw["recipients"] += [
        new_recipient("a", parent="b"),
        new_recipient("b", parent="c"),
        new_recipient("c", parent="a"),
    ]
    cycle = assert_problem(problems_of(raw), "recipients", "parent cycle")
    assert all(name in cycle for name in ("a", "b", "c"))


# --- ownership: prefixes, AS numbers, domains ------------------------------------------------


def test_identical_prefix_claimed_by_two_recipients() -> None:
    raw = example()
    i = index_of(raw, "recipients", "ibd")
    raw["recipients"][i]["constituency"]["networks"].append("192.0.2.16/28")
    problems = problems_of(raw)
    assert len(problems) == 1
    assert_problem(
        problems,
        f"recipients[{i}](ibd).constituency.networks",
        "192.0.2.16/28",
        "already claimed by recipient 'ziekenhuis-noord'",
    )


def test_identical_ipv6_prefix_written_differently_is_still_the_same_claim() -> None:
    """2001:db8:10:0::/48 is 2001:db8:10::/48: comparing text would miss the conflict."""
    raw = example()
    i = index_of(raw, "recipients", "ibd")
    raw["recipients"][i]["constituency"]["networks"].append("2001:DB8:10:0::/48")
    assert_problem(
        problems_of(raw),
        f"recipients[{i}](ibd).constituency.networks",
        "2001:db8:10::/48",
        "already claimed by recipient 'zcert'",
    )


def test_more_specific_prefix_of_another_recipient_is_accepted() -> None:
    """Nesting is how a sector CERT and its members share space: it must stay legal."""
    raw = example()
    raw["recipients"].append(
        new_recipient("kliniek-zuid", parent="zcert", constituency={"networks": ["192.0.2.64/26"]})
    )
    config = parse_config(raw)
    assert config.recipient("kliniek-zuid").constituency.networks == [ipaddress.ip_network("192.0.2.64/26")]


def test_less_specific_prefix_of_another_recipient_is_accepted() -> None:
    raw = example()
    raw["recipients"].append(new_recipient("backbone", constituency={"networks": ["192.0.2.0/24"]}))
    parse_config(raw)


def test_same_prefix_listed_twice_by_one_recipient() -> None:
    raw = example()
    i = index_of(raw, "recipients", "zcert")
    raw["recipients"][i]["constituency"]["networks"].append("192.0.2.0/25")
    assert_problem(
        problems_of(raw), f"recipients[{i}](zcert).constituency.networks", "192.0.2.0/25 is listed twice"
    )


def test_same_as_number_claimed_twice() -> None:
    raw = example()
    i = index_of(raw, "recipients", "ibd")
    raw["recipients"][i]["constituency"]["asns"] = [64500]
    problems = problems_of(raw)
    assert len(problems) == 1
    assert_problem(
        problems, f"recipients[{i}](ibd).constituency.asns", "64500", "already claimed by recipient 'zcert'"
    )


def test_same_domain_claimed_twice_even_in_other_case() -> None:
    """Domains are compared canonically: `Example.ORG.` is `example.org`."""
    raw = example()
    i = index_of(raw, "recipients", "ibd")
    raw["recipients"][i]["constituency"]["domains"].append("Example.ORG.")
    problems = problems_of(raw)
    assert len(problems) == 1
    assert_problem(
        problems,
        f"recipients[{i}](ibd).constituency.domains",
        "example.org",
        "already claimed by recipient 'zcert'",
    )


def test_subdomain_of_a_claimed_domain_is_accepted() -> None:
    raw = example()
    raw["recipients"].append(
        new_recipient("ziekenhuis-zuid", parent="zcert", constituency={"domains": ["zuid.example.org"]})
    )
    parse_config(raw)


# --- TLP -------------------------------------------------------------------------------------


def test_bad_max_tlp() -> None:
    raw = example()
    i = index_of(raw, "recipients", "zcert")
    raw["recipients"][i]["max_tlp"] = "purple"
    problems = problems_of(raw)
    assert len(problems) == 1
    problem = assert_problem(problems, f"recipients[{i}](zcert).max_tlp")
    for level in ("clear", "green", "amber", "amber+strict", "red"):
        assert f"'{level}'" in problem


def test_bad_partner_default_tlp() -> None:
    raw = example()
    raw["partners"][0]["default_tlp"] = "white"  # TLP 1.0 name: not valid in the config
    assert_problem(problems_of(raw), "partners[0](divd).default_tlp")


# --- users -----------------------------------------------------------------------------------


def test_plaintext_password_hash_is_refused() -> None:
    raw = example()
    i = index_of(raw, "users", "zcert-poller", key="username")
    raw["users"][i]["password_hash"] = "hunter2"
    problems = problems_of(raw)
    assert len(problems) == 1
    problem = assert_problem(problems, f"users[{i}](zcert-poller).password_hash", "argon2")
    assert "hunter2" not in problem, "the error must not echo the secret"


def test_user_with_unknown_recipient() -> None:
    raw = example()
    i = index_of(raw, "users", "ibd-poller", key="username")
    raw["users"][i]["recipient"] = "no-such-org"
    problems = problems_of(raw)
    assert len(problems) == 1
    assert_problem(problems, f"users[{i}](ibd-poller).recipient", "unknown recipient 'no-such-org'")


def test_user_with_unknown_inbox_partner() -> None:
    raw = example()
    i = index_of(raw, "users", "researcher-1", key="username")
    raw["users"][i]["inbox"] = "no-such-partner"
    assert_problem(problems_of(raw), f"users[{i}](researcher-1).inbox", "unknown partner 'no-such-partner'")


def test_user_granting_nothing() -> None:
    raw = example()
    i = index_of(raw, "users", "ibd-poller", key="username")
    del raw["users"][i]["recipient"]
    problems = problems_of(raw)
    assert len(problems) == 1
    assert_problem(problems, f"users[{i}](ibd-poller)", "grants nothing")


def test_duplicate_usernames() -> None:
    raw = example()
    first = index_of(raw, "users", "ibd-poller", key="username")
    raw["users"].append(copy.deepcopy(raw["users"][first]))
    dup = len(raw["users"]) - 1
    problems = problems_of(raw)
    assert len(problems) == 1
    assert_problem(
        problems, f"users[{dup}].username", "duplicate username 'ibd-poller'", f"first at users[{first}]"
    )


# --- many problems at once -------------------------------------------------------------------


def test_several_schema_problems_are_all_reported() -> None:
    """Fixing one typo per start-up attempt is slow: every schema problem comes at once."""
    raw = example()
    raw["colour"] = "blue"
    recipient(raw, "zcert")["max_tlp"] = "purple"
    recipient(raw, "ibd")["constituency"]["networks"] = ["192.0.2.1/24"]
    user(raw, "zcert-poller")["password_hash"] = "plaintext"
    problems = problems_of(raw)
    assert len(problems) == 4
    assert_problem(problems, "colour", "unknown key")
    assert_problem(problems, f"recipients[{index_of(raw, 'recipients', 'zcert')}](zcert).max_tlp")
    assert_problem(
        problems, f"recipients[{index_of(raw, 'recipients', 'ibd')}](ibd).constituency.networks", "host bits"
    )
    poller = index_of(raw, "users", "zcert-poller", key="username")
    assert_problem(problems, f"users[{poller}](zcert-poller).password_hash", "argon2")


def test_several_consistency_problems_are_all_reported() -> None:
    raw = example()
    recipient(raw, "ziekenhuis-noord")["parent"] = "nosuch"
    recipient(raw, "ibd")["constituency"]["asns"] = [64500]
    user(raw, "gemeente-poller")["recipient"] = "nosuch2"
    raw["users"].append(copy.deepcopy(user(raw, "ibd-poller")))
    noord = index_of(raw, "recipients", "ziekenhuis-noord")
    ibd = index_of(raw, "recipients", "ibd")
    gemeente = index_of(raw, "users", "gemeente-poller", key="username")
    dup = len(raw["users"]) - 1
    problems = problems_of(raw)
    assert len(problems) == 4
    assert_problem(problems, f"recipients[{noord}](ziekenhuis-noord).parent", "'nosuch'")
    assert_problem(problems, f"recipients[{ibd}](ibd).constituency.asns", "64500")
    assert_problem(problems, f"users[{gemeente}](gemeente-poller).recipient", "'nosuch2'")
    assert_problem(problems, f"users[{dup}].username", "duplicate username 'ibd-poller'")


def test_render_lists_every_problem_under_the_source() -> None:
    raw = example()
    raw["colour"] = "blue"
    raw["flavour"] = "vanilla"
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="prod.yaml")
    text = info.value.render()
    assert text.splitlines()[0] == "configuration prod.yaml is not valid:"
    assert "  - colour: unknown key" in text
    assert "  - flavour: unknown key" in text


# --- load_config: files and environment ------------------------------------------------------


def _load_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    return info.value.problems


def test_duplicate_top_level_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "database: sqlite:///a.db\ndatabase: sqlite:///b.db\n")
    (problem,) = _load_problems(path)
    assert "duplicate key 'database'" in problem
    assert "line 2" in problem


def test_duplicate_nested_key_is_refused(tmp_path: Path) -> None:
    """PyYAML keeps the last of two keys: a second `networks:` would silently drop claims."""
    text = SAMPLE_CONFIG.read_text(encoding="utf-8").replace(
        "      networks: [192.0.2.16/28]",
        "      networks: [192.0.2.16/28]\n      networks: [192.0.2.32/28]",
    )
    assert text.count("networks: [192.0.2.32/28]") == 1
    (problem,) = _load_problems(write(tmp_path, text))
    assert "duplicate key 'networks'" in problem


def test_missing_file_is_reported_not_raised(tmp_path: Path) -> None:
    (problem,) = _load_problems(tmp_path / "absent.yaml")
    assert problem.startswith("cannot read")
    assert "No such file" in problem


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (problem,) = _load_problems(tmp_path)
    assert problem.startswith("cannot read")


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A config saved as Latin-1 (an `é` in a name) must be a ConfigError like any other bad
    file, so the CLI prints a message and exits 2 instead of a traceback."""
    text = SAMPLE_CONFIG.read_text(encoding="utf-8").replace("name: Z-CERT", "name: Z-CERT Zoé")
    path = write(tmp_path, text.encode("latin-1"))
    (problem,) = _load_problems(path)
    assert "utf-8" in problem.lower() or "encoding" in problem.lower()


def test_unhashable_yaml_key_is_a_config_error(tmp_path: Path) -> None:
    """`? [a, b]` is valid YAML with a list as key; it must be refused as a config error,
    not crash the duplicate-key check with a TypeError."""
    path = write(tmp_path, "? [a, b]\n: 1\n")
    (problem,) = _load_problems(path)
    assert "not valid YAML" in problem or "unhashable" in problem


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert _load_problems(write(tmp_path, "- database\n")) == ["top level must be a mapping of keys"]


def test_invalid_yaml_syntax(tmp_path: Path) -> None:
    (problem,) = _load_problems(write(tmp_path, "recipients: [\n"))
    assert problem.startswith("not valid YAML")


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    config = load_config(path)
    assert config == Config(database=beside(path, "sqlite:///meldpunt.db"))


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    raw = example()
    recipient(raw, "ibd")["parent"] = "nosuch"
    path = write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert str(path) in info.value.render()


def test_database_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, SAMPLE_CONFIG.read_text(encoding="utf-8"))
    assert load_config(path).database == beside(path, _EXAMPLE["database"])
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    monkeypatch.setenv(DATABASE_ENV, url)
    assert load_config(path).database == url
    # Relative in the environment: relative to the working directory, left as it is.
    monkeypatch.setenv(DATABASE_ENV, "sqlite:///from-env.db")
    assert load_config(path).database == "sqlite:///from-env.db"


def test_config_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = example()
    raw["database"] = "sqlite:///elsewhere.db"
    path = write(tmp_path, yaml.safe_dump(raw))
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert load_config().database == beside(path, "sqlite:///elsewhere.db")


def test_explicit_path_wins_over_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "absent.yaml"))
    assert load_config(SAMPLE_CONFIG).database == beside(SAMPLE_CONFIG, _EXAMPLE["database"])


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("notaurl", "not a database URL"),
        ("mysql://user:pw@127.0.0.1/db", "'mysql'"),
        ("postgresql+psycopg://", "names no database"),
    ],
)
def test_a_database_url_that_cannot_be_used_is_a_config_error(url: str, fragment: str) -> None:
    """An unusable URL must stop the load naming the key, not fail later as a traceback."""
    raw = example()
    raw["database"] = url
    problem = assert_problem(problems_of(raw), "database", fragment)
    assert "pw" not in problem, "the URL's password must not be echoed"


def test_a_bad_database_url_from_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, SAMPLE_CONFIG.read_text(encoding="utf-8"))
    monkeypatch.setenv(DATABASE_ENV, "sqlite//forgot-the-colon.db")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_problem(info.value.problems, f"database (from ${DATABASE_ENV})", "not a database URL")
