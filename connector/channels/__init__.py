"""Channels that deliver renderings to recipients: MISP push (the outbox), MISP feeds. The TAXII
server (taxii_server/) is the other channel."""
