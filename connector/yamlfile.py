"""Reading the project's YAML files (configuration, mappings) strictly.

PyYAML silently keeps the last of two equal keys; in a constituency or a mapping that drops a
claim or a field without a word. Here a duplicate key is an error naming it and its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"unhashable key {key!r}", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class YamlFileError(Exception):
    """The file cannot be read as YAML; the message says why (never a traceback)."""


def load_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise YamlFileError(f"not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise YamlFileError(f"cannot read: {exc.strerror}") from None
    # Read from the text (decoded and checked above), but with the file's path as the name
    # PyYAML puts in its marks: given a string it says `in "<unicode string>", line 3`,
    # which tells an operator with several YAML files nothing.
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise YamlFileError(f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
