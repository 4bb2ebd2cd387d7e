"""Traffic Light Protocol 2.0: levels, their order, and the official STIX marking definitions."""

from __future__ import annotations

from typing import Any, Literal

Tlp = Literal["clear", "green", "amber", "amber+strict", "red"]

# Order of restriction: a recipient allowed `amber` may receive clear, green and amber.
TLP_LEVELS: dict[str, int] = {"clear": 0, "green": 1, "amber": 2, "amber+strict": 3, "red": 4}

TLP2_EXTENSION_ID = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"

TLP2_MARKING_IDS: dict[str, str] = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}

# TLP 1.0 markings as the stix2 library ships them, accepted on input and mapped to 2.0.
TLP1_MARKING_IDS: dict[str, str] = {
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": "clear",  # TLP:WHITE
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": "green",
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": "amber",
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": "red",
}

_ALIASES = {"white": "clear", "tlp:white": "clear", "amber-strict": "amber+strict"}


def parse_tlp(value: str) -> str:
    """Accept `amber`, `TLP:AMBER`, `tlp:amber+strict`, TLP 1.0 `white`; reject anything else."""
    text = value.strip().lower()
    text = _ALIASES.get(text, text)
    text = text.removeprefix("tlp:")
    text = _ALIASES.get(text, text)
    if text not in TLP_LEVELS:
        raise ValueError(f"unknown TLP level {value!r}")
    return text


def allows(ceiling: str, level: str) -> bool:
    return TLP_LEVELS[level] <= TLP_LEVELS[ceiling]


def marking_definition(level: str) -> dict[str, Any]:
    """The official TLP 2.0 marking definition object, as published by OASIS."""
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": TLP2_MARKING_IDS[level],
        "created": "2022-10-01T00:00:00.000Z",
        "name": f"TLP:{level.upper()}",
        "extensions": {
            TLP2_EXTENSION_ID: {"extension_type": "property-extension", "tlp_2_0": level},
        },
    }
