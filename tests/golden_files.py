"""Golden files: compare output with tests/golden/NAME, or rewrite it with MELDPUNT_UPDATE_GOLDEN=1
(then review the diff: it is exactly what recipients will see change)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from connector.export import write_bundle
from connector.store import Store

GOLDEN = Path(__file__).parent / "golden"


def recipient_bundle(store: Store, recipient: str) -> dict[str, Any]:
    buffer = io.BytesIO()
    write_bundle(store, recipient, buffer)
    return json.loads(buffer.getvalue())  # type: ignore[no-any-return]


def assert_golden(actual: dict[str, Any], name: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MELDPUNT_UPDATE_GOLDEN"):
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert actual == json.loads(path.read_text())
