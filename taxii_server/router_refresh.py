"""Keeping a server's router current with the approved constituency claims.

Every ingest builds its router when it starts, so it routes by the claims approved before it.
A server builds one at start for inbox submissions; this thread builds it again when the
approved claims change (one small query every INTERVAL seconds), so a claim approved through
another server process, or by another host, takes effect here too without a restart.
"""

from __future__ import annotations

import logging
import threading

from connector import claims
from connector.routing import Router
from taxii_server.context import ServerState

log = logging.getLogger("meldpunt.taxii")


class RouterRefresher:
    INTERVAL = 10.0  # seconds between looks at the claims

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._seen = claims.generation(state.store)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meldpunt-router-refresh", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def refresh(self) -> bool:
        """Build the router again if the approved claims changed; True when it did."""
        current = claims.generation(self.state.store)
        if current == self._seen:
            return False
        self.state.router = Router(claims.with_claims(self.state.config, self.state.store))
        self._seen = current
        log.info("router rebuilt with the approved constituency claims", extra={"approved": current[0]})
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            try:
                self.refresh()
            except Exception:  # a database hiccup: try again next round, keep serving
                log.exception("could not look at the constituency claims")
