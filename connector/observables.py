"""What a submitted STIX object says about hosts and people, wherever in it that is.

A submission is routed by its observables and must not carry one recipient's hosts to another,
so every place an address can be written is looked at (issue #14, item 15):

- structured observables, which route: the `value` of ipv4-addr, ipv6-addr, domain-name, url
  and email-addr objects (also inside observed-data's deprecated `objects`), and the
  comparisons of STIX patterns on a `value`, of those types or reached through a reference
  (`network-traffic:dst_ref.value`), with their literals decoded whatever their form: quoted,
  hex (`h'c6336442'`, four or sixteen bytes are an address, other bytes are read as text) or
  base64 (`b'...'`), and each member of an IN set;
- mentions, which only hold an object back: every address, host name, URL and e-mail address
  written in any other string of the object (descriptions, names, custom properties, external
  references, patterns of other pattern types such as snort or yara, the constants of pattern
  comparisons on other properties). An object is routed by what it is about, not by what it
  mentions; but it goes to nobody when it mentions a host of another recipient.
- comparisons that cannot be routed: a comparison on an address other than equality, IN or
  ISSUBSET (LIKE, MATCHES, !=, >, ISSUPERSET ...), or whose literal is no address. The pattern
  is about some address, but which one cannot be known, so the object is held back.

Personal data (item 12): e-mail addresses, accounts, e-mail messages and URLs with user info,
as objects, in patterns or written anywhere (an identity's `contact_information`, how to reach
the author, excepted). Such objects go to the direct owner only. User info in a URL is masked
before anything is stored, as leaked credentials are (connector.adapters.converters.mask_secret).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from stix2patterns.v21.pattern import Pattern

from connector.adapters.converters import mask_secret
from connector.normalize import canonical_domain, canonical_ip, canonical_ip_or_network, is_ip, url_host

ROUTABLE_TYPES = frozenset({"ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr"})
PERSONAL_TYPES = frozenset({"email-addr", "user-account", "email-message"})
# Operators whose constants name the addresses the pattern is about.
_ROUTING_OPERATORS = frozenset({"=", "IN", "ISSUBSET"})
Observable = tuple[str, str]  # ("ip" | "domain", canonical value)

# A STIX pattern literal: quoted text, hex, base64, timestamp, or a bare number or boolean.
_LITERAL = re.compile(
    r"h'(?P<hex>[^']*)'|b'(?P<b64>[^']*)'|t'(?P<time>[^']*)'|'(?P<text>(?:[^'\\]|\\.)*)'|(?P<bare>[^\s,()']+)"
)
# A URL's user info: what lies between `scheme://` and `@` (no `/`, `?`, `#`, spaces or quotes).
USER_INFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^\s/?#@'\"<>\\\[\]]+)@")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?:/\d{1,2})?(?!\.?\d)")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:/\d{1,3})?")
_HOST = re.compile(
    r"(?<![\w.-])(?:[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+(?:xn--[a-z0-9-]+|[a-z]{2,63})(?![\w-])",
    re.I | re.A,
)
_EMAIL = re.compile(r"[\w.+-]+@(?:[a-z0-9-]+\.)+[a-z]{2,}", re.I | re.A)
# Strings that are identifiers or timestamps by definition: nothing to look for in them.
_NOT_TEXT = frozenset(
    {"id", "type", "spec_version", "created", "modified", "pattern_type", "pattern_version"}
)


@dataclass
class Content:
    """What one object says: see the module's docstring."""

    observables: list[Observable] = field(default_factory=list)
    mentions: list[Observable] = field(default_factory=list)
    unroutable: str | None = None  # why an address in it cannot be routed
    personal: bool = False


def content_of(obj: dict[str, Any]) -> Content:
    out = Content()
    kind = obj.get("type")
    if kind in ROUTABLE_TYPES:
        _add_value(out, str(kind), obj.get("value"))
    if kind in PERSONAL_TYPES:
        out.personal = True
    if kind == "observed-data" and isinstance(obj.get("objects"), dict):
        for embedded in obj["objects"].values():
            if isinstance(embedded, dict):
                inner = content_of(embedded)
                out.observables += inner.observables
                out.personal |= inner.personal
    if kind == "indicator" and obj.get("pattern_type") == "stix" and isinstance(obj.get("pattern"), str):
        _pattern(out, obj["pattern"])
    contact = obj.get("contact_information") if kind == "identity" else None
    for text in _strings(obj, structured_pattern=obj.get("pattern_type") == "stix"):
        if text is contact:
            continue
        out.mentions += mentions_in(text)
        if _EMAIL.search(text) or USER_INFO.search(text):
            out.personal = True
    return out


def mentions_in(text: str) -> Iterator[Observable]:
    """Addresses, networks and host names written in a text."""
    for token in _IPV4.findall(text):
        yield from _observable("ipv4-addr", token)
    if text.count(":") >= 2:
        for token in _IPV6.findall(text):
            if token.count(":") >= 2:
                yield from _observable("ipv6-addr", token.strip(":") if token.endswith(":::") else token)
    for host in _HOST.findall(text):
        yield from _observable("domain-name", host)


def mask_user_info(text: str) -> str:
    """Every URL's user info masked: the password after `user:` as leaked credentials are
    masked; user info without a password whole (it may be a token: `https://<token>@host`)."""

    def masked(match: re.Match[str]) -> str:
        user, colon, password = match.group(2).partition(":")
        info = f"{user}:{mask_secret(password)}" if colon else mask_secret(user)
        return f"{match.group(1)}{info}@"

    return USER_INFO.sub(masked, text)


def masked_copy(value: Any) -> Any:
    """The value with user info masked in every string (keys too); the very same object when
    there is none, so objects without it stay exactly as they were sent."""
    if isinstance(value, str):
        return mask_user_info(value) if "@" in value else value
    if isinstance(value, dict):
        pairs = [(masked_copy(k), masked_copy(v)) for k, v in value.items()]
        same = all(mk is k and mv is v for (mk, mv), (k, v) in zip(pairs, value.items(), strict=True))
        return value if same else dict(pairs)
    if isinstance(value, list):
        items = [masked_copy(v) for v in value]
        return value if all(m is v for m, v in zip(items, value, strict=True)) else items
    return value


def _strings(obj: dict[str, Any], structured_pattern: bool = False) -> Iterator[str]:
    """Every string of the object, keys included, but not ids, references and timestamps (nor a
    STIX pattern, whose constants are read one by one)."""
    skip = _NOT_TEXT | {"pattern"} if structured_pattern else _NOT_TEXT
    stack: list[Any] = [v for k, v in obj.items() if k not in skip and not _is_reference(k)]
    stack += [k for k in obj]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for key, child in value.items():
                stack.append(key)
                if not _is_reference(key):
                    stack.append(child)
        elif isinstance(value, list):
            stack.extend(value)


def _is_reference(key: Any) -> bool:
    return isinstance(key, str) and (key.endswith("_ref") or key.endswith("_refs"))


def _pattern(out: Content, pattern: str) -> None:
    try:
        comparisons = Pattern(pattern).inspect().comparisons
    except Exception:  # the validator has parsed it already; a pattern it passes and this
        out.unroutable = "its pattern could not be read"  # library does not is not routed
        return
    for object_type, items in comparisons.items():
        for path, operator, literal in items:
            _comparison(out, object_type, [p for p in path if isinstance(p, str)], operator, literal)


def _comparison(out: Content, object_type: str, names: list[str], operator: str, literal: str) -> None:
    """One comparison of a STIX pattern: what its constants mention, what it routes by."""
    values = _literals(literal)
    if object_type in PERSONAL_TYPES:
        out.personal = True
    for value in values:
        text = _as_text(value)
        if text is not None:
            out.mentions += mentions_in(text)
            out.personal |= bool(_EMAIL.search(text) or USER_INFO.search(text))
    own_value = object_type in ROUTABLE_TYPES and names == ["value"]
    if not (own_value or (len(names) > 1 and names[-1] == "value")):
        return  # not an address: its constants were only looked through
    if operator not in _ROUTING_OPERATORS:
        out.unroutable = f"a pattern comparison on an address with {operator}"
        return
    for value in values:
        found = list(_decoded_observables(object_type if own_value else None, value))
        out.observables += found
        if not found and own_value:
            out.unroutable = "a pattern compares an address with a value that is no address"


def _literals(literal: str) -> list[str | bytes | None]:
    """The constants of a comparison (several for an IN set), decoded; None: undecodable."""
    values: list[str | bytes | None] = []
    for match in _LITERAL.finditer(literal):
        if match["hex"] is not None:
            try:
                values.append(bytes.fromhex(match["hex"]))
            except ValueError:
                values.append(None)
        elif match["b64"] is not None:
            try:
                values.append(base64.b64decode(match["b64"], validate=True))
            except (binascii.Error, ValueError):
                values.append(None)
        elif match["text"] is not None:
            values.append(re.sub(r"\\(.)", r"\1", match["text"]))
        elif match["time"] is not None:
            values.append(match["time"])
        else:
            values.append(match["bare"])
    return values


def _as_text(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value


def _decoded_observables(object_type: str | None, value: str | bytes | None) -> Iterator[Observable]:
    """What a constant compared with an address names. `object_type` None: the value of some
    referenced object (`dst_ref.value`), whose type the path does not say."""
    if value is None:
        return
    if isinstance(value, bytes):
        if len(value) in (4, 16) and object_type in (None, "ipv4-addr", "ipv6-addr"):
            yield ("ip", canonical_ip(str(ipaddress.ip_address(value))))
            return
        text = _as_text(value)
        if text is None:
            return
        value = text
    if object_type is not None:
        yield from _observable(object_type, value)
        return
    text = value.strip()
    if is_ip(text.partition("/")[0]):
        yield from _observable("ipv4-addr", text)
    elif "@" in text and "://" not in text:
        yield from _observable("email-addr", text)
    elif "://" in text:
        yield from _observable("url", text)
    else:
        yield from _observable("domain-name", text)


def _add_value(out: Content, kind: str, value: Any) -> None:
    out.observables += _observable(kind, value)
    if kind == "url" and isinstance(value, str) and USER_INFO.search(value):
        out.personal = True


def _observable(kind: str, value: Any) -> Iterator[Observable]:
    """('ip', address or network) or ('domain', host name) of a value of the given type."""
    if not isinstance(value, str) or not value.strip():
        return
    try:
        if kind in ("ipv4-addr", "ipv6-addr"):
            # An address or a network: a network goes to the claim holding all of it.
            yield ("ip", canonical_ip_or_network(value))
        elif kind == "domain-name":
            yield ("domain", canonical_domain(value))
        elif kind == "email-addr":
            yield ("domain", canonical_domain(value.rpartition("@")[2]))
        elif kind == "url":
            host = url_host(value)
            if host:
                yield ("ip", canonical_ip(host)) if is_ip(host) else ("domain", canonical_domain(host))
    except ValueError:
        return
