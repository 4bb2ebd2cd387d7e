"""Reading a POSTed TAXII envelope one object at a time (TAXII 2.1 section 5.5).

The reading itself is connector/stix_stream.py (also used for STIX files): objects are built
one by one from parser events and handed to the submission as they come, so only the valid
ones are held, and counting stops at `server.max_objects_per_post`. Here its errors become
TAXII errors: 400 for a body that is not an envelope, 413 past the cap.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from connector.stix_stream import StreamError, TooManyObjects, stream_objects
from taxii_server.errors import TaxiiError


def envelope_objects(body: bytes, limit: int) -> Iterator[Any]:
    """The envelope's objects, in order; raises TaxiiError 400 or 413 (possibly only once the
    last object has been read: the caller must write nothing before the iterator ends)."""
    try:
        yield from stream_objects(body, limit=limit)
    except TooManyObjects:
        raise TaxiiError(
            413,
            "Too many objects",
            f"An envelope may hold at most {limit} objects (server.max_objects_per_post); "
            "send the rest in further requests.",
        ) from None
    except StreamError as exc:
        if exc.kind == "json":
            raise TaxiiError(400, "Invalid JSON", str(exc)) from None
        raise TaxiiError(400, "Not a TAXII envelope", f'Expected {{"objects": [...]}}: {exc}.') from None
