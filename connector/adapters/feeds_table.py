"""The README's table of supported feeds, generated from `mappings/` so it cannot drift.

python -m connector.adapters.feeds_table --write README.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from connector.adapters.mapping import Mapping, load_mappings

START, END = "<!-- feeds:start -->", "<!-- feeds:end -->"


def feeds_table(mappings: dict[str, Mapping]) -> str:
    lines = ["| format | feed | reader | RSIT classification | case metadata |", "|---|---|---|---|---|"]
    for name in sorted(mappings):
        m = mappings[name]
        sidecar = f"`{m.context.sidecar}` beside the input" if m.context else "-"
        lines.append(
            f"| `{name}` | {m.title} | {m.reader} | "
            f"`{m.classification.taxonomy}/{m.classification.type}` | {sidecar} |"
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
