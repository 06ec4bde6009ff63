"""Who changes the index when no HTTP request does: a DIMSE peer storing
over its association. The index change's own transaction records it, under
the peer's name and address, as the audit middleware records a request's."""

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class Actor:
    name: str  # the calling AE title
    address: str | None
    description: str  # what it asked, for the record
    recorded: bool = False  # set once a change it made was recorded in its transaction


# Set around the work done for the actor, in the thread that does it.
current_actor: ContextVar[Actor | None] = ContextVar("current_actor", default=None)
