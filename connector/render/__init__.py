"""Renderings of the record: STIX 2.1 objects, MISP events, a collection's pages."""
