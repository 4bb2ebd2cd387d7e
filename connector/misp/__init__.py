"""MISP delivery: notifications as MISP events, pushed through PyMISP or offered as a feed."""
