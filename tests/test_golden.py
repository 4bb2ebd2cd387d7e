"""Golden files: a sample input next to the bundle each recipient must get, clock fixed.

Regenerate after an intended change of the output with MELDPUNT_UPDATE_GOLDEN=1, then review
the diff: it is exactly what recipients will see change.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows
from connector.config import Config
from connector.ingest import Ingestor
from connector.store import Store
from tests.conftest import DIVD_SCAN
from tests.golden_files import GOLDEN, assert_golden, recipient_bundle

FIXED_CLOCK = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("recipient", ["zcert", "ziekenhuis-noord", "ibd", "gemeente-voorbeeld"])
def test_divd_bundle_per_recipient(tmp_path: Path, sample_config: Config, recipient: str) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'g.db'}")
    store.sync_collections(collection_rows(sample_config))
    Ingestor(sample_config, store, load_mappings(), clock=lambda: FIXED_CLOCK).run(
        "divd", "divd-nuclei", [DIVD_SCAN]
    )
    assert_golden(recipient_bundle(store, recipient), f"divd-nuclei.{recipient}.bundle.json")


DATA = Path(__file__).parent / "data"


def _fresh(tmp_path: Path, config: Config) -> Store:
    store = Store.open(f"sqlite:///{tmp_path / 'g.db'}")
    store.sync_collections(collection_rows(config))
    return store


@pytest.mark.parametrize("recipient", ["ibd", "zcert"])
def test_leaked_credentials_bundle_per_recipient(
    tmp_path: Path, sample_config: Config, recipient: str
) -> None:
    """Synthetic rows: one per owner (example.nl: IBD; example.org: Z-CERT) and one at a domain
    nobody owns (discarded). The masked password is the only trace of the password."""
    store = _fresh(tmp_path, sample_config)
    summary = Ingestor(sample_config, store, load_mappings(), clock=lambda: FIXED_CLOCK).run(
        "divd", "divd-credentials", [DATA / "credentials" / "DIVD-2024-00099.credentials.csv"]
    )
    assert summary.counts["discarded"] == 1
    assert_golden(recipient_bundle(store, recipient), f"divd-credentials.{recipient}.bundle.json")
    text = (GOLDEN / f"divd-credentials.{recipient}.bundle.json").read_text()
    assert "CorrectHorse42" not in text and "tiny" not in text


@pytest.mark.parametrize("recipient", ["gemeente-voorbeeld", "zcert"])
def test_researcher_bundle_per_recipient(tmp_path: Path, sample_config: Config, recipient: str) -> None:
    """A researcher's bundle: the observed host goes to the municipality, the indicator to
    Z-CERT, the invalid indicator nowhere."""
    store = _fresh(tmp_path, sample_config)
    summary = Ingestor(sample_config, store, load_mappings(), clock=lambda: FIXED_CLOCK).run(
        "researcher-1", "stix", [DATA / "stix" / "researcher-1.bundle.json"]
    )
    assert summary.counts["quarantined"] == 1
    assert_golden(recipient_bundle(store, recipient), f"stix-researcher-1.{recipient}.bundle.json")
