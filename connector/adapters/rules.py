"""Per-row classification (a mapping's `classify` rules), kept apart from the engine.

A report may hold findings of more than one kind (Shadowserver's scan_exchange: a server
vulnerable to a CVE, or one already carrying a web shell). The first rule whose condition holds
for a record gives its classification and the field specs to read it with (the mapping's own,
with the rule's replacements; a field the rule sets to null is not read). Without a match, the
mapping's own classification and fields apply. Which rule matches is decided before any field
is read, so a rule can relax what the mapping requires (a CVE) for the rows it covers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from connector.adapters.mapping import ClassificationSpec, ClassifyRule, FieldSpec, Mapping
from connector.adapters.paths import MISSING, lookup

Prepared = TypeVar("Prepared")


def _texts(data: Any, path: str) -> list[str]:
    """The value at a dotted record path as texts (each element of a list); [] when absent/empty."""
    node = lookup(data, path)
    if node is MISSING:
        return []
    values = node if isinstance(node, list) else [node]
    return [str(v) for v in values if v is not None and v != ""]


def _test(rule: ClassifyRule) -> Callable[[str], bool]:
    if rule.equals is not None:
        wanted = {str(v) for v in rule.equals}
        return wanted.__contains__
    if rule.contains is not None:
        part = rule.contains
        return lambda text: part in text
    assert rule.matches is not None  # the schema demands exactly one test
    pattern = re.compile(rule.matches)
    return lambda text: pattern.search(text) is not None


class Classifier(Generic[Prepared]):
    """callable(record data) -> (classification, prepared field specs) for one mapping.

    `prepare` turns each outcome's field specs into what the caller reads a record with (the
    engine compiles them), once, when the classifier is built.
    """

    def __init__(self, mapping: Mapping, prepare: Callable[[dict[str, FieldSpec]], Prepared]) -> None:
        self._default = (mapping.classification, prepare(dict(mapping.fields)))
        self._rules: list[tuple[str, Callable[[str], bool], tuple[ClassificationSpec, Prepared]]] = []
        for rule in mapping.classify:
            fields = {**mapping.fields, **rule.fields}
            specs = {name: spec for name, spec in fields.items() if spec is not None}
            self._rules.append((rule.field, _test(rule), (rule.classification, prepare(specs))))

    def __call__(self, data: dict[str, Any]) -> tuple[ClassificationSpec, Prepared]:
        for path, test, outcome in self._rules:
            if any(test(text) for text in _texts(data, path)):
                return outcome
        return self._default
