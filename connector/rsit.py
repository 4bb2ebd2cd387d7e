"""The Reference Security Incident Taxonomy (RSIT), as the MISP `rsit` taxonomy spells it."""

from __future__ import annotations

RSIT: dict[str, tuple[str, ...]] = {
    "abusive-content": ("spam", "harmful-speech", "violence"),
    "malicious-code": ("infected-system", "c2-server", "malware-distribution", "malware-configuration"),
    "information-gathering": ("scanner", "sniffing", "social-engineering"),
    "intrusion-attempts": ("ids-alert", "brute-force", "exploit"),
    "intrusions": (
        "privileged-account-compromise",
        "unprivileged-account-compromise",
        "application-compromise",
        "system-compromise",
        "burglary",
    ),
    "availability": ("dos", "ddos", "misconfiguration", "sabotage", "outage"),
    "information-content-security": (
        "unauthorised-information-access",
        "unauthorised-information-modification",
        "data-loss",
        "data-leak",
    ),
    "fraud": ("unauthorised-use-of-resources", "copyright", "masquerade", "phishing"),
    "vulnerable": (
        "weak-crypto",
        "ddos-amplifier",
        "potentially-unwanted-accessible",
        "information-disclosure",
        "vulnerable-system",
    ),
    "other": ("other", "undetermined"),
    "test": ("test",),
}


def check_category(value: str) -> str:
    """A recipient category: `taxonomy` or `taxonomy/type`; ValueError naming what is known."""
    taxonomy, _, type_ = value.partition("/")
    if taxonomy not in RSIT:
        raise ValueError(f"unknown RSIT taxonomy {taxonomy!r}; known: {', '.join(RSIT)}")
    if type_ and type_ not in RSIT[taxonomy]:
        raise ValueError(f"unknown RSIT type {type_!r} in {taxonomy}; known: {', '.join(RSIT[taxonomy])}")
    return value
