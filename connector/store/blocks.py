"""What the store's two logs in blocks share (deliveries per collection, notification versions):
finding, in process, the blocks that hold a sorted list of stamps.

Blocks are keyed by their last stamp and never overlap, so a stamp's block is the first whose
`last` is not below it, if that block's `first` is not above it. SQLite answers a look-up in
process, so one look-up per block, each stamp after it up to its `last` answered by that block,
costs less than a statement per stamp (PostgreSQL probes every stamp in one statement instead:
deliveries._blocks_holding, notifications.version_blocks_holding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

B = TypeVar("B")


def holding(
    stamps: Iterable[int], block_at: Callable[[int], B | None], span: Callable[[B], tuple[int, int]]
) -> Iterator[B]:
    """The blocks holding any of these stamps (sorted), each once, in order. `block_at(stamp)`:
    the first block whose last is not below the stamp (None: none is); `span(block)`: its
    (first, last). A stamp below a block's first is held by no block, but a later stamp may be
    held by that one, so the block is kept, not yielded, until one is."""
    current: B | None = None
    given = False  # whether `current` was yielded
    for stamp in stamps:
        if current is None or stamp > span(current)[1]:
            current = block_at(stamp)
            if current is None:
                return
            given = False
        if not given and span(current)[0] <= stamp:
            yield current
            given = True
