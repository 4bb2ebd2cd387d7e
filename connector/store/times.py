"""Time in the store: microseconds for date_added (TAXII's precision), milliseconds for the
record's own times (STIX timestamps' precision here), and their RFC 3339 forms."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_us() -> int:
    return time.time_ns() // 1000


def us_to_timestamp(value: int) -> str:
    """date_added as TAXII shows it: RFC 3339 UTC with microseconds."""
    moment = _EPOCH + timedelta(microseconds=value)
    return f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:%S.%fZ")  # %Y does not pad year 1


_MS_TEXT: dict[int, str] = {}


def ms_to_timestamp(value: int) -> str:
    """A STIX timestamp with millisecond precision, as the renderer writes them."""
    seconds, ms = divmod(value, 1000)
    text = _MS_TEXT.get(seconds)
    if text is None:  # rendering a page writes the same seconds many times
        if len(_MS_TEXT) > 100_000:
            _MS_TEXT.clear()
        moment = _EPOCH + timedelta(seconds=seconds)
        text = _MS_TEXT[seconds] = (
            f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}."
        )
    return f"{text}{ms:03d}Z"


_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$")


def timestamp_to_us(value: str) -> int:
    """Parse an RFC 3339 timestamp (any precision) to microseconds; ValueError if malformed."""
    match = _RFC3339.match(value.strip())
    if not match:
        raise ValueError(f"not an RFC 3339 timestamp with a time zone: {value!r}")
    day, clock_time, fraction, zone = match.groups()
    # Python parses at most 6 fraction digits; RFC 3339 and TAXII allow more.
    micro = (fraction or "").ljust(6, "0")[:6]
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        moment = datetime.fromisoformat(f"{day}T{clock_time}.{micro}{zone}")
    except ValueError:
        raise ValueError(f"not a valid RFC 3339 timestamp: {value!r}") from None
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def moment_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime (naive: taken as UTC), truncated as the
    STIX timestamp of it is."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


@lru_cache(maxsize=4096)
@lru_cache(maxsize=4096)  # ingest asks it per notification, of a few days
def day_text(day: int) -> str:
    """Days since 1970-01-01 as the date the natural key holds (`2024-06-01`)."""
    moment = _EPOCH + timedelta(days=day)
    return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"


def day_number(text: str) -> int:
    return (datetime.fromisoformat(text).replace(tzinfo=UTC) - _EPOCH).days


def version_key(modified: str | None) -> str:
    """Versions normalised to one fixed-width form, so they order correctly as text."""
    if not modified:
        return ""
    if len(modified) == 24 and modified[19] == "." and modified[23] == "Z" and modified[10] == "T":
        return modified[:23] + "000Z"  # the millisecond form this project writes: no parsing
    return us_to_timestamp(timestamp_to_us(modified))
