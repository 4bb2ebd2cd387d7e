"""TAXII 2.1 server: one read collection per recipient, readable only by that recipient."""

from taxii_server.app import create_app

__all__ = ["create_app"]
