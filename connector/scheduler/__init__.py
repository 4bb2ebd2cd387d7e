"""The recurring work of `meldpunt run`: spool pick-up, MISP pulls, MISP sync."""
