"""FHIR R4 Subscriptions (subscription.html), rest-hook channel: client
writes of Subscription, and the outbox of notifications they lead to.

A Subscription is its owner's: only the owner (or an admin) sees it, in any
read or search (`owned_subscriptions`, a rule of `server.fhir.visibility`),
and changes or deletes it; to anyone else it is not there. Its headers carry
the credentials of other systems' endpoints, and its `error` what it failed
to send. It runs with the rights of whoever wrote it last, held to the scopes
of the token it was written with, so an admin's update makes it the admin's.
Writing one needs the right to read and to search what its criteria match,
as a read and a search of them would (`notification_permissions`); each
notification checks again that the owner still may
(`server.fhir.subscription_delivery`). A deleted Subscription keeps its row,
inactive, so that its history stays its owner's.

Notifications are durable: the store tells `OutboxWriter` of every version it
writes, and one row per active Subscription watching that type is written in
the same transaction, whichever process (a request, a job, a Celery worker)
wrote the resource. Whether the resource matches the criteria is decided when
the row is sent, by the search engine.
"""

import functools
from collections.abc import Iterable
from typing import Any

import httpx
from sqlalchemy import ColumnElement, Connection, bindparam, delete, insert, or_, select, update

from fhir_mappings.errors import Forbidden, ResourceNotFound
from fhir_mappings.search_query import SearchRequest
from fhir_mappings.subscription import UNWATCHED_TYPES, accepted
from server.auth.access import Permission, Principal, current_principal, search_permissions
from server.auth.scopes import Grant, Role
from server.db import before_commit, dialect_insert
from server.fhir.store import StoredVersion
from server.jobs.queue import now_micros
from server.tables import fhir_subscription_notifications, fhir_subscriptions


def notification_permissions(criteria: SearchRequest) -> set[Permission]:
    """What a notification discloses: the resource (read), and whether it
    matches the criteria, which is what a search of them would tell (SMART v2
    grants searching apart from reading)."""
    return {Permission(criteria.resource_type, "r"), Permission(criteria.resource_type, "s"),
            *search_permissions(criteria)}


def missing_permissions(grant: Grant, criteria: SearchRequest) -> list[str]:
    return sorted(f"{p.resource_type}.{p.letter}" for p in notification_permissions(criteria)
                  if not grant.allows(p.resource_type, p.letter))


def as_sent(url: str) -> str:
    """A URL as the notifications' HTTP client writes it on the wire (its
    normalisation), ValueError for one it cannot send."""
    try:
        return str(httpx.URL(url))
    except httpx.InvalidURL as error:
        raise ValueError(str(error)) from error


def owned_subscriptions(ids: Any) -> ColumnElement[bool] | None:
    """The visibility rule of Subscription: the request's principal sees its
    own; an admin, and the server itself (no request), see all."""
    principal = current_principal.get()
    if principal is None or principal.role == Role.ADMIN.value:
        return None
    return ids.in_(select(fhir_subscriptions.c.subscription_id).where(
        fhir_subscriptions.c.owner == principal.name, fhir_subscriptions.c.owner_is_client == principal.client
    ))


class SubscriptionWrites:
    """The `Subscription` write hook of the FHIR service."""

    def __init__(self, endpoint_prefixes: list[str]) -> None:
        self.endpoint_prefixes = endpoint_prefixes

    def creating(self, connection: Connection, subscription: dict[str, Any], subscription_id: str) -> dict[str, Any]:
        return self._accept(connection, subscription, subscription_id)

    def updating(self, connection: Connection, subscription: dict[str, Any], subscription_id: str) -> dict[str, Any]:
        return self._accept(connection, subscription, subscription_id)

    def deleting(self, connection: Connection, subscription_id: str) -> None:
        _require_own(connection, _writer(), subscription_id)
        forget(connection, subscription_id)

    def _accept(self, connection: Connection, subscription: dict[str, Any], subscription_id: str) -> dict[str, Any]:
        principal = _writer()
        _require_own(connection, principal, subscription_id)
        stored, terms = accepted(subscription, self.endpoint_prefixes, as_sent, now_micros())
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


def _writer() -> Principal:
    principal = current_principal.get()
    if principal is None:
        raise Forbidden("a Subscription is written by a user or a client, with whose rights it sends")
    return principal


def _require_own(connection: Connection, principal: Principal, subscription_id: str) -> None:
    """Another's Subscription, deleted or not, is not there for a writer who
    is not an admin. Its row stays locked to the end of the write (on
    PostgreSQL), so that it changes hands only once at a time."""
    owner = select(fhir_subscriptions.c.owner, fhir_subscriptions.c.owner_is_client).where(
        fhir_subscriptions.c.subscription_id == subscription_id
    )
    if connection.dialect.name == "postgresql":
        owner = owner.with_for_update()
    row = connection.execute(owner).first()
    if row is None or principal.role == Role.ADMIN.value or tuple(row) == (principal.name, principal.client):
        return
    raise ResourceNotFound(f"Subscription/{subscription_id} is not known")


def forget(connection: Connection, subscription_id: str) -> None:
    """A deleted Subscription: nothing more is sent for it. Its row stays,
    inactive: it says whose the history is. (No row is deleted, so an outbox
    row that a writer of the watched type adds meanwhile, having seen it
    active, breaks no foreign key: the dispatcher drops it, as it drops the
    rows of any inactive Subscription.)"""
    connection.execute(update(fhir_subscriptions).where(fhir_subscriptions.c.subscription_id == subscription_id)
                       .values(active=False))
    drop_pending(connection, subscription_id)


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
            watching = connection.execute(
                _watching_statement(), {"criteria_type": resource_type, "now": now}
            ).scalars().all()
            rows = [
                {"subscription_id": subscription_id, "resource_type": resource_type, "resource_id": resource_id,
                 "version_id": version_id, "attempts": 0, "not_before": now, "created_at": now}
                for subscription_id in watching for resource_id, version_id in written.items()
            ]
            if rows:
                connection.execute(insert(fhir_subscription_notifications), rows)


@functools.cache
def _watching_statement() -> Any:
    """The active Subscriptions to a type (`criteria_type`) at `now`, built
    once: every FHIR write asks it, and building it took SQLAlchemy 0.2 ms."""
    return select(fhir_subscriptions.c.subscription_id).where(
        fhir_subscriptions.c.criteria_type == bindparam("criteria_type"), fhir_subscriptions.c.active,
        or_(fhir_subscriptions.c.end_at.is_(None), fhir_subscriptions.c.end_at > bindparam("now")),
    ).order_by(fhir_subscriptions.c.subscription_id)
