"""The allow-list of converters a mapping file may name.

Mapping files are data from many hands; they may only pick from these functions, never name
arbitrary code. Each converter takes the raw value and returns the clean one, or raises
ValueError with a message fit for the quarantine record.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from connector.normalize import canonical_domain, canonical_ip, canonical_ip_or_network, is_ip, url_host
from connector.tlp import parse_tlp

_CVE_RE = re.compile(r"^CVE-\d{4}-\d{4,}$")
# RFC 5322 dot-atom: what a mailbox's local part may hold (no ':' of a `user:password` combo).
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


def _text(value: Any) -> str:
    if value.__class__ is str:  # every CSV cell: answered before the checks below
        return value  # type: ignore[no-any-return]
    if isinstance(value, list):
        if not value:
            raise ValueError("empty list")
        value = value[0]
    if value is None:
        raise ValueError("no value")
    return str(value)


def ip_address(value: Any) -> str:
    return canonical_ip(_text(value))


def ip_or_network(value: Any) -> str:
    """An address, or a network in CIDR notation (`192.0.2.0/24`, host bits zero; a /32 is the
    address): for feeds that list whole networks. Routing sends a network to the most specific
    claim covering all of it."""
    return canonical_ip_or_network(_text(value))


def port(value: Any) -> int:
    text = _text(value).strip()
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port {value!r}")
    return int(text)


# What a converter raises for a value it cannot use: ValueError by contract. OverflowError is
# the same fault reached through datetime or int arithmetic (`0001-01-01T00:00:00+01:00` has no
# UTC form); callers catch both, so no single value can abort an input.
CONVERSION_ERRORS = (ValueError, OverflowError)

# The times an observation may carry. Outside them a time is a placeholder for "unknown" (Go's
# zero time 0001-01-01T00:00:00Z, which nuclei writes; the Unix epoch; 9999-12-31 "never"), a
# typing error, or has no UTC form at all: it would date the notification to a day that means
# nothing and, as its last_seen, keep every later observation from updating it. No partner
# feed reports occurrences from before 1990.
EARLIEST_OBSERVATION = datetime(1990, 1, 1, tzinfo=UTC)
LATEST_OBSERVATION = datetime(2100, 1, 1, tzinfo=UTC)


def observation_time(moment: datetime, given: Any = None) -> datetime:
    """`moment` in UTC (naive: taken as UTC, as feeds without an offset report it), if it can
    be an observation time; else ValueError quoting `given` (the input value, or `moment`)."""
    original = moment  # quoted only in an error: every row of a feed passes here
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.tzinfo is UTC:
        pass  # astimezone(UTC) would give it back as it is
    else:
        try:
            moment = moment.astimezone(UTC)
        except OverflowError:
            shown = repr(original.isoformat() if given is None else given)
            raise ValueError(f"timestamp {shown} is out of range (no UTC time has that date)") from None
    if not EARLIEST_OBSERVATION <= moment < LATEST_OBSERVATION:
        shown = repr(original.isoformat() if given is None else given)
        raise ValueError(
            f"timestamp {shown} is not an observation time (outside {EARLIEST_OBSERVATION:%Y}-"
            f"{LATEST_OBSERVATION.year - 1} UTC: a placeholder for an unknown time?)"
        )
    return moment


def timestamp(value: Any) -> datetime:
    """An ISO 8601 / RFC 3339 time in UTC, within the observation window (observation_time)."""
    text = _text(value).strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"invalid timestamp {value!r}") from None
    return observation_time(moment, value)


def cve_id(value: Any) -> str:
    text = _text(value).strip().upper()
    if not _CVE_RE.match(text):
        raise ValueError(f"not a CVE id: {value!r}")
    return text


def url_host_name(value: Any) -> str | None:
    """The host name of a URL, or None when the URL's host is an IP literal."""
    host = url_host(_text(value))
    if host is None or is_ip(host):
        return None
    return canonical_domain(host)


def domain(value: Any) -> str:
    return canonical_domain(_text(value))


def lower(value: Any) -> str:
    return _text(value).strip().lower()


def text(value: Any) -> str:
    return _text(value).strip()


def integer(value: Any) -> int:
    try:
        return int(_text(value).strip())
    except ValueError:
        raise ValueError(f"not an integer: {value!r}") from None


def asn(value: Any) -> int | None:
    raw = _text(value).strip().upper().removeprefix("AS")
    number = integer(raw)
    if number == 0:
        return None  # feeds write 0 for "AS unknown"
    if not 0 < number < 2**32:
        raise ValueError(f"invalid AS number {value!r}")
    return number


def mask_secret(value: Any) -> str:
    """DIVD's masking: length >= 10 keeps the first 2 and last 2 characters, shorter keeps the
    first and last, `*` for the rest; 2 characters or fewer are masked whole."""
    text = _text(value)
    if len(text) >= 10:
        return text[:2] + "*" * (len(text) - 4) + text[-2:]
    if len(text) > 2:
        return text[0] + "*" * (len(text) - 2) + text[-1]
    return "*" * len(text)


def email(value: Any) -> str:
    """An e-mail address, trimmed, lower-cased, with an IDNA domain."""
    text = _text(value).strip()
    local, at, host = text.rpartition("@")
    if not at or not _LOCAL_PART.match(local):
        raise ValueError(f"not an e-mail address: {value!r}")
    return f"{local.lower()}@{canonical_domain(host)}"


def url(value: Any) -> str:
    """A URL with a host: scheme lower-cased, user info (credentials) removed, and the host in
    the form every other host name takes (canonical_domain: lower-case, IDNA 2008 punycode, no
    trailing dot). A Unicode host made a second url object (and notification) beside its
    punycode spelling, and a url value must be an RFC 3986 URI, which is ASCII. A host name
    canonical_domain refuses is kept lower-cased, as before: the URL is still the evidence."""
    text = _text(value).strip()
    parts = urlsplit(text)
    if not parts.scheme or not parts.hostname:
        raise ValueError(f"not a URL with a host: {value!r}")
    host = parts.hostname
    if is_ip(host):
        host = url_host(text) or host  # an IPv6 literal without its zone (normalize._unscoped)
    else:
        with contextlib.suppress(ValueError):
            host = canonical_domain(host)
    port = f":{parts.port}" if parts.port else ""  # a bad port raises ValueError here
    netloc = (f"[{host}]" if ":" in host else host) + port
    return urlunsplit((parts.scheme.lower(), netloc, parts.path, parts.query, parts.fragment))


# A URL without its scheme: a host (name, IPv4 address or bracketed IPv6 address), an optional
# port, then nothing or a path, query or fragment. No user info: `user:pw@host/x` is refused.
_SCHEMELESS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.%]+\]|[^\s/?#@:\[\]]+)(?::[0-9]+)?(?:[/?#]\S*)?$")


def url_or_schemeless(value: Any) -> str:
    """A URL as `url` gives it; one written without a scheme (`www.example.com/login`, as MISP
    takes a url) is read as http://, the scheme a browser assumes, so that it is an absolute
    URI as a STIX url value must be. Only a dotted host name or an address may start one:
    `mailto:...`, `/relative` or free text is not a URL at all."""
    text = _text(value).strip()
    if "://" in text:
        return url(text)
    match = _SCHEMELESS.match(text)
    host = match.group("host").strip("[]") if match else ""
    if not host or not (is_ip(host) or ("." in host and _is_domain(host))):
        raise ValueError(f"not a URL with a host: {value!r}")
    return url(f"http://{text}")


def _is_domain(text: str) -> bool:
    try:
        canonical_domain(text)
    except ValueError:
        return False
    return True


def url_without_query(value: Any) -> str:
    """A URL as `url` gives it, without query and fragment (they carry tokens and passwords)."""
    parts = urlsplit(url(value))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def cve_in_text(value: Any) -> str:
    """The first CVE id named anywhere in a text (Shadowserver tags: `cve-2021-26855;exchange`)."""
    match = re.search(r"cve-\d{4}-\d{4,}", _text(value), re.IGNORECASE)
    if not match:
        raise ValueError(f"no CVE id in {value!r}")
    return match.group(0).upper()


def tlp(value: Any) -> str:
    return parse_tlp(_text(value))


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "ip_address": ip_address,
    "ip_or_network": ip_or_network,
    "port": port,
    "timestamp": timestamp,
    "cve_id": cve_id,
    "url_host_name": url_host_name,
    "domain": domain,
    "lower": lower,
    "text": text,
    "integer": integer,
    "asn": asn,
    "tlp": tlp,
    "mask_secret": mask_secret,
    "email": email,
    "url": url,
    "url_or_schemeless": url_or_schemeless,
    "url_without_query": url_without_query,
    "cve_in_text": cve_in_text,
}
