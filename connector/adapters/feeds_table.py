"""The README's table of supported feeds, generated from `mappings/` so it cannot drift.

python -m connector.adapters.feeds_table --write README.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from connector.adapters.mapping import Mapping, families, load_mappings
from connector.adapters.registry import ADAPTER_INFO, load_code_adapters

START, END = "<!-- feeds:start -->", "<!-- feeds:end -->"


def feeds_table(mappings: dict[str, Mapping]) -> str:
    """Mapping files, then code adapters (with the `ingest --format` value in the first column)."""
    load_code_adapters()
    lines = ["| format | feed | reader | RSIT classification | case metadata |", "|---|---|---|---|---|"]
    for fmt in sorted(families(mappings)):
        count = sum(1 for m in mappings.values() if m.family == fmt)
        lines.append(
            f"| `{fmt}` | {count} report types (below); report type from the file name | csv | "
            "per report type | - |"
        )
    for name in sorted(mappings):
        m = mappings[name]
        sidecar = (
            " or ".join(f"`{name}`" for name in m.context.sidecars()) + " beside the input"
            if m.context
            else "-"
        )
        classes = [f"{m.classification.taxonomy}/{m.classification.type}"]
        classes += [f"{r.classification.taxonomy}/{r.classification.type}" for r in m.classify]
        shown = f"`{classes[0]}`" + (
            "; per row: " + ", ".join(f"`{c}`" for c in classes[1:]) if m.classify else ""
        )
        lines.append(f"| `{name}` | {m.title} | {m.reader} | {shown} | {sidecar} |")
    for fmt in sorted(ADAPTER_INFO):
        info = ADAPTER_INFO[fmt]
        lines.append(f"| `{fmt}` | {info.title} | {info.reader} | {info.classification} | - |")
    lines.append(
        "| `stix` | Researchers' STIX 2.1 bundles (file or TAXII inbox) | json | from the objects | - |"
    )
    return "\n".join(lines)


def replace_table(text: str, table: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str]) -> int:
    table = feeds_table(load_mappings())
    if len(argv) == 2 and argv[0] == "--write":
        path = Path(argv[1])
        path.write_text(replace_table(path.read_text(), table))
    else:
        print(table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
