"""The README's promises that code can check: the feeds table and the test command."""

from __future__ import annotations

from pathlib import Path

from connector.adapters.feeds_table import END, START, feeds_table
from connector.adapters.mapping import load_mappings

REPO = Path(__file__).resolve().parents[1]


def test_feeds_table_is_generated_from_mappings() -> None:
    text = (REPO / "README.md").read_text()
    current = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert current == feeds_table(load_mappings()), (
        "run: python -m connector.adapters.feeds_table --write README.md"
    )


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text().splitlines()
    block = readme[readme.index("```sh") + 1 : readme.index("```sh") + 3]
    assert len(block) == 2 and "meldpunt demo" in block[0] and "pytest" in block[1]
    assert block[1].replace("-e '.[test]'", "-q -e '.[test]'") in (REPO / ".ci" / "run").read_text()
