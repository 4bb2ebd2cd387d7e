"""Adapters: generic readers driven by mapping files under `mappings/`."""
