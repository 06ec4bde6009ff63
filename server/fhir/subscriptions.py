"""FHIR R4 Subscriptions (subscription.html), rest-hook channel: client
writes of Subscription, and the outbox of notifications they lead to.

A Subscription runs with the rights of whoever wrote it last, held to the
scopes of the token it was written with: whoever may update one may point it
elsewhere, so the update makes it theirs (a client that could redirect
another's Subscription would otherwise send with the other's rights). Writing
one needs the right to read what its criteria match, as a read and a search
of them would (`notification_permissions`); each notification checks again
that the owner still may (`server.fhir.subscription_delivery`).

Notifications are durable: the store tells `OutboxWriter` of every version it
writes, and one row per active Subscription watching that type is written in
the same transaction, whichever process (a request, a job, a Celery worker)
wrote the resource. Whether the resource matches the criteria is decided when
the row is sent, by the search engine.
"""

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, delete, insert, or_, select

from fhir_mappings.errors import Forbidden
from fhir_mappings.search_query import SearchRequest
from fhir_mappings.subscription import UNWATCHED_TYPES, accepted
from server.auth.access import Permission, current_principal, search_permissions
from server.auth.scopes import Grant
from server.db import before_commit, dialect_insert
from server.fhir.store import StoredVersion
from server.jobs.queue import now_micros
from server.tables import fhir_subscription_notifications, fhir_subscriptions


def notification_permissions(criteria: SearchRequest) -> set[Permission]:
    """What a notification discloses: the resource (read), and whether it
    matches the criteria, which is what a search of them would tell."""
    return {Permission(criteria.resource_type, "r"), *search_permissions(criteria)}


def missing_permissions(grant: Grant, criteria: SearchRequest) -> list[str]:
    return sorted(f"{p.resource_type}.{p.letter}" for p in notification_permissions(criteria)
                  if not grant.allows(p.resource_type, p.letter))


class SubscriptionWrites:
    """The `Subscription` write hook of the FHIR service."""

    def __init__(self, endpoint_prefixes: list[str]) -> None:
        self.endpoint_prefixes = endpoint_prefixes

    def creating(self, connection: Connection, subscription: dict[str, Any], subscription_id: str) -> dict[str, Any]:
        return self._accept(connection, subscription, subscription_id)

    def updating(self, connection: Connection, subscription: dict[str, Any], subscription_id: str) -> dict[str, Any]:
        return self._accept(connection, subscription, subscription_id)

    def deleting(self, connection: Connection, subscription_id: str) -> None:
        forget(connection, subscription_id)

    def _accept(self, connection: Connection, subscription: dict[str, Any], subscription_id: str) -> dict[str, Any]:
        principal = current_principal.get()
        if principal is None:
            raise Forbidden("a Subscription is written by a user or a client, with whose rights it sends")
        stored, terms = accepted(subscription, self.endpoint_prefixes, now_micros())
        missing = missing_permissions(principal.grant, terms.criteria)
        if missing:
            raise Forbidden(f"{principal.name} may not subscribe to what it may not read: Subscription.criteria"
                            f" needs {', '.join(missing)}")
        owner = {
            "criteria_type": terms.criteria.resource_type, "active": terms.status == "active", "end_at": terms.end,
            "owner": principal.name, "owner_is_client": principal.client, "scopes": str(principal.grant),
        }
        upsert = dialect_insert(connection.dialect.name, fhir_subscriptions).values(
            subscription_id=subscription_id, **owner
        )
        connection.execute(upsert.on_conflict_do_update(index_elements=["subscription_id"], set_=owner))
        if terms.status != "active":
            drop_pending(connection, subscription_id)
        return stored


def forget(connection: Connection, subscription_id: str) -> None:
    """A deleted Subscription: nothing more is sent for it."""
    drop_pending(connection, subscription_id)
    connection.execute(delete(fhir_subscriptions).where(fhir_subscriptions.c.subscription_id == subscription_id))


def drop_pending(connection: Connection, subscription_id: str) -> None:
    """The notifications of a Subscription not yet sent: none are, once it is not active."""
    connection.execute(delete(fhir_subscription_notifications).where(
        fhir_subscription_notifications.c.subscription_id == subscription_id
    ))


def outbox_notifications(connection: Connection, resource_type: str, versions: list[StoredVersion]) -> None:
    """The store's `on_written` hook: the versions are gathered through the
    transaction, and the outbox rows written once as it ends, with one
    indexed read per type written when nobody subscribes to it."""
    if resource_type not in UNWATCHED_TYPES:
        before_commit(connection, "subscriptions.outbox", _Written).add(resource_type, versions)


class _Written:
    def __init__(self) -> None:
        self.versions: dict[str, dict[str, int]] = {}  # type -> id -> the last version written

    def add(self, resource_type: str, versions: Iterable[StoredVersion]) -> None:
        self.versions.setdefault(resource_type, {}).update(
            (version.resource_id, version.version_id) for version in versions
        )

    def __call__(self, connection: Connection) -> None:
        now = now_micros()
        for resource_type, written in self.versions.items():
            watching = connection.execute(select(fhir_subscriptions.c.subscription_id).where(
                fhir_subscriptions.c.criteria_type == resource_type, fhir_subscriptions.c.active,
                or_(fhir_subscriptions.c.end_at.is_(None), fhir_subscriptions.c.end_at > now),
            ).order_by(fhir_subscriptions.c.subscription_id)).scalars().all()
            rows = [
                {"subscription_id": subscription_id, "resource_type": resource_type, "resource_id": resource_id,
                 "version_id": version_id, "attempts": 0, "not_before": now, "created_at": now}
                for subscription_id in watching for resource_id, version_id in written.items()
            ]
            if rows:
                connection.execute(insert(fhir_subscription_notifications), rows)
