"""The Public Suffix List, offline: which names nobody may claim (`nl`, `co.uk`, `github.io`).

tldextract ships a snapshot of the list; it is used as is, never refreshed over the network
(the clearinghouse's hosts reach no arbitrary sites, and routing must not change by itself).
"""

from __future__ import annotations

from functools import lru_cache

import tldextract


@lru_cache(maxsize=1)
def _extractor() -> tldextract.TLDExtract:
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)


def is_public_suffix(name: str) -> bool:
    parts = _extractor()(name)
    return bool(parts.suffix) and not parts.domain
