"""Golden files: a sample input next to the bundle each recipient must get, clock fixed.

Regenerate after an intended change of the output with MELDPUNT_UPDATE_GOLDEN=1, then review
the diff: it is exactly what recipients will see change.
"""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows
from connector.config import Config
from connector.export import write_bundle
from connector.ingest import Ingestor
from connector.store import Store
from tests.conftest import DIVD_SCAN

GOLDEN = Path(__file__).parent / "golden"
FIXED_CLOCK = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("recipient", ["zcert", "ziekenhuis-noord", "ibd", "gemeente-voorbeeld"])
def test_divd_bundle_per_recipient(tmp_path: Path, sample_config: Config, recipient: str) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'g.db'}")
    store.sync_collections(collection_rows(sample_config))
    Ingestor(sample_config, store, load_mappings(), clock=lambda: FIXED_CLOCK).run(
        "divd", "divd-nuclei", [DIVD_SCAN]
    )
    buffer = io.BytesIO()
    write_bundle(store, recipient, buffer)
    actual = json.loads(buffer.getvalue())
    path = GOLDEN / f"divd-nuclei.{recipient}.bundle.json"
    if os.environ.get("MELDPUNT_UPDATE_GOLDEN"):
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    expected = json.loads(path.read_text())
    assert actual == expected
