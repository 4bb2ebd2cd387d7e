"""STIX 2.1 output: deterministic ids, markings, the project's extension, object building."""
