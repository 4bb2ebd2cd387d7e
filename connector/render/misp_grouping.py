"""Which MISP event a notification belongs to, per recipient: stable, so pushes are upserts."""

from __future__ import annotations

from connector.notification import Notification
from connector.stix.ids import project_uuid


def misp_event_of(recipient: str, n: Notification, group_by: str, day: str | None = None) -> tuple[str, str]:
    """(event UUID, human label): one event per partner case (or feed) per day, per recipient.

    The recipient is part of the UUID: a sector MISP shared by several constituents gets one
    event per constituent, so distribution can keep them apart.
    """
    group = n.case_id if group_by == "case-day" and n.case_id else n.feed
    day = day or n.day  # the notification's key day: a later sighting stays in its first event
    uuid = project_uuid("misp-event", recipient, n.partner, group, day)
    return str(uuid), f"{n.partner} {group} {day}"
