"""Security Meldpunt connector: partner feeds in, STIX 2.1 out, routed per recipient."""

__version__ = "0.1.0"
