"""Sending the rest-hook notifications of FHIR R4 Subscriptions
(subscription.html#2.46.7.1): a background thread of each server process
takes due rows of the outbox and sends them, each on a sender thread of its
own: it claims rows as sender threads free up, so a slow endpoint holds one
thread (for at most a send's deadline, `NotificationSender`), not the others.

Rows are claimed, not taken: a claim pushes the row's `not_before` past a
lease in the transaction that picks it (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, SQLite's writers take turns), so each row goes to one dispatcher
of however many processes; the row is deleted once sent, or set due again
with a doubled wait, and a process that dies while sending leaves it to be
claimed again when the lease ends, which is longer than a send may take. A
notification is therefore sent at least
once, and may be sent twice; UPS Watch's reports, which PS3.18 lets a server
drop, are taken out of their outbox as they are sent instead.

When a row is sent, the resource's current version is what counts: it must
match the criteria (the search engine runs them restricted to its `_id`), the
version the row was written for must still be current (a later version has a
row of its own, so a client hears of each resource once per burst of
changes), and the Subscription's owner must still hold the rights writing it
needed. An owner disabled or without them sets the Subscription to `error`
saying so: nothing of it is sent until its owner (or an admin) asks again
(status `requested`). So does a notification that failed `attempts` times,
whatever made it fail, and one claimed more often than that (its senders
died). A Subscription whose `end` has passed is turned `off` by the rounds.
The `error` text names the endpoint, never the resource the notification was
about, which a reader of the Subscription may not be allowed to read.

Each send is recorded in the audit trail (DCM 110106 Export) with the owner,
the endpoint's URL, the resource and its patient, and the answer.
"""

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, Engine, delete, select, update

from fhir_mappings import fhir_json
from fhir_mappings.audit_event import AuditKind, Outcome
from fhir_mappings.patient_compartment import patients_of_json
from fhir_mappings.subscription import Terms, sendable_url, terms_of
from server.audit.service import AuditService
from server.auth.identities import SERVER_AGENT, Identities
from server.auth.scopes import Grant
from server.db import reading, write_connection
from server.fhir.notification_sender import NotificationSender
from server.fhir.search import Searcher
from server.fhir.store import ResourceStore
from server.fhir.subscriptions import as_sent, drop_pending, missing_permissions
from server.jobs.queue import now_micros
from server.tables import fhir_subscription_notifications, fhir_subscriptions

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
_SENDERS = 16  # notifications sent at once, each on a thread of its own
_OUTBOX = fhir_subscription_notifications


@dataclass(frozen=True)
class DeliveryPolicy:
    attempts: int
    retry_seconds: float
    timeout_seconds: float  # the whole of one send: connect, send and the answer's head

    @property
    def lease_micros(self) -> int:
        """Longer than a claimed row takes: its send's deadline, and the reads
        and writes around it (a generous margin: a lease that ends early has
        the row sent twice)."""
        return int((2 * self.timeout_seconds + 30) * 1_000_000)

    def retry_micros(self, attempts: int) -> int:
        return int(self.retry_seconds * 2 ** (attempts - 1) * 1_000_000)


class _Claimed(NamedTuple):
    id: int
    subscription_id: str
    resource_type: str
    resource_id: str
    version_id: int
    attempts: int


class _Sent(NamedTuple):
    url: str
    delivered: bool
    result: str  # what the endpoint answered, or why nothing came back; the resource's id left out


class Dispatcher:
    def __init__(self, engine: Engine, store: ResourceStore, searcher: Searcher, identities: Identities,
                 audit: AuditService, policy: DeliveryPolicy, fhir_base: str, endpoint_prefixes: list[str]) -> None:
        self.engine = engine
        self.store = store
        self.searcher = searcher
        self.identities = identities
        self.audit = audit
        self.policy = policy
        self.fhir_base = fhir_base
        self.endpoint_prefixes = endpoint_prefixes
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = NotificationSender(policy.timeout_seconds)
        self._senders: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Made at each start, as an app's lifespan may run more than once."""
        self._http.start()
        self._senders = ThreadPoolExecutor(max_workers=_SENDERS, thread_name_prefix="subscription-send")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="subscription-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Sends under way finish (each within its deadline); nothing more is claimed."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=POLL_SECONDS + 10)
            self._thread = None
        if self._senders is not None:
            self._senders.shutdown(wait=True, cancel_futures=True)
            self._senders = None
        self._http.stop()

    def _run(self) -> None:
        assert self._senders is not None, "the dispatcher runs between start and stop"
        in_flight: set[Future[None]] = set()
        while not self._stopping.is_set():
            try:
                self._turn_off_ended()
                claimed = self._claim(_SENDERS - len(in_flight))
            except Exception:  # the thread must outlive any one round: every notification hangs on it
                log.exception("a round of Subscription notifications failed; trying again")
                claimed = []
            in_flight |= {self._senders.submit(self._deliver, row) for row in claimed}
            if claimed and len(in_flight) < _SENDERS:
                continue  # more may be due
            if in_flight:
                in_flight = wait(in_flight, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED).not_done
            else:
                self._stopping.wait(POLL_SECONDS)

    def _turn_off_ended(self) -> None:
        """Subscriptions whose `end` has passed become `off`: no row is written
        for them any more, so no row would turn them off when due."""
        now = now_micros()
        with reading(self.engine) as connection:
            ended = connection.execute(select(fhir_subscriptions.c.subscription_id).where(
                fhir_subscriptions.c.active, fhir_subscriptions.c.end_at <= now
            )).scalars().all()
        for subscription_id in ended:
            self._end(subscription_id, "off", None)

    def _claim(self, limit: int) -> list[_Claimed]:
        if limit <= 0:
            return []
        now = now_micros()
        with reading(self.engine) as connection:  # most rounds find nothing: no write lock taken for that
            if connection.execute(select(_OUTBOX.c.id).where(_OUTBOX.c.not_before <= now).limit(1)).first() is None:
                return []
        with write_connection(self.engine) as connection:
            due = select(_OUTBOX.c.id).where(_OUTBOX.c.not_before <= now).order_by(_OUTBOX.c.id).limit(limit)
            if connection.dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            ids = connection.execute(due).scalars().all()
            if not ids:
                return []
            rows = connection.execute(
                update(_OUTBOX).where(_OUTBOX.c.id.in_(ids), _OUTBOX.c.not_before <= now)
                .values(not_before=now + self.policy.lease_micros, attempts=_OUTBOX.c.attempts + 1)
                .returning(_OUTBOX.c.id, _OUTBOX.c.subscription_id, _OUTBOX.c.resource_type, _OUTBOX.c.resource_id,
                           _OUTBOX.c.version_id, _OUTBOX.c.attempts)
            ).all()
        return [_Claimed(*row) for row in rows]

    def _deliver(self, row: _Claimed) -> None:
        try:
            self._deliver_one(row)
        except Exception:  # one row's failure must not end the others
            log.exception("the notification %s of Subscription/%s failed", row.id, row.subscription_id)
            if row.attempts >= self.policy.attempts:  # else its lease brings it back, as one more attempt
                self._give_up(row, "the server failed to prepare it")

    def _deliver_one(self, row: _Claimed) -> None:
        if row.attempts > self.policy.attempts:  # claimed that often: its senders died while sending it
            self._give_up(row, "no sending of it came to an end")
            return
        with reading(self.engine) as connection:
            owner = connection.execute(
                select(fhir_subscriptions).where(fhir_subscriptions.c.subscription_id == row.subscription_id)
            ).first()
            subscription = self.store.current_body("Subscription", row.subscription_id, connection)
        if owner is None or subscription is None or not owner.active:
            self._drop(row)  # deleted, off or in error meanwhile: nothing to send
            return
        terms = terms_of(subscription)
        if terms.end is not None and terms.end <= now_micros():
            self._end(row.subscription_id, "off", None)
            return
        refusal = self._refusal(owner, terms)
        if refusal is not None:
            self._end(row.subscription_id, "error", refusal)
            return
        body = self._matching_version(row, terms)
        if body is None:
            self._drop(row)
            return
        sent = self._send(terms, row, body)
        self._finish(row, owner.owner, sent, body)

    def _refusal(self, owner: Any, terms: Terms) -> str | None:
        """Why the owner may no longer have this sent, if it may not: it is
        disabled or gone, or the scopes it wrote the Subscription with, held
        to those it has now, no longer allow reading what the criteria match."""
        current = self.identities.current_grant(owner.owner, owner.owner_is_client)
        if current is None:
            return f"its owner {owner.owner} is disabled or gone; nothing is sent for it"
        missing = missing_permissions(Grant.parse(owner.scopes).narrowed_to(current), terms.criteria)
        if missing:
            return f"its owner {owner.owner} may no longer read what it matches ({', '.join(missing)}); nothing is sent"
        return None

    def _matching_version(self, row: _Claimed, terms: Terms) -> bytes | None:
        """The resource's current version as stored, if it matches the
        criteria and is the version the row was written for."""
        pairs = [*terms.criteria.parameters, ("_id", row.resource_id), ("_total", "none")]
        page = self.searcher.search(row.resource_type, pairs, self.fhir_base, strict=True)
        if not page.matches:
            return None
        body = page.matches[0].body
        current = int(orjson.loads(body)["meta"]["versionId"])
        return body if current == row.version_id else None

    def _send(self, terms: Terms, row: _Claimed, body: bytes) -> _Sent:
        """Any failure is a failed attempt, told by its kind and message with
        the URL as the Subscription may show it."""
        channel = terms.channel
        method, url = channel.request(row.resource_type, row.resource_id)
        shown = channel.request(row.resource_type, "…")[1]  # the id left out
        try:
            # Judged again as sent: the resource's id is part of a PUT's URL.
            sendable_url(url, self.endpoint_prefixes, as_sent)
        except ValueError:
            return _Sent(url, False, f"{method} {shown} was not sent: it is not a plain URL under an allowed prefix")
        # A header may be given more than once: each is sent.
        headers = [*channel.headers, *([("Content-Type", channel.payload)] if channel.payload is not None else [])]
        try:
            status = self._http.send(method, url, body if channel.payload is not None else b"", headers)
        except TimeoutError:
            return _Sent(url, False, f"{method} {shown} had no answer within {self.policy.timeout_seconds:g} s")
        except Exception as error:
            reason = str(error).replace(url, shown)[:200]
            return _Sent(url, False, f"{method} {shown} failed: {type(error).__name__} {reason}".rstrip())
        return _Sent(url, 200 <= status < 300, f"{method} {shown} answered {status}")

    def _finish(self, row: _Claimed, owner: str, sent: _Sent, body: bytes) -> None:
        final = not sent.delivered and row.attempts >= self.policy.attempts
        with write_connection(self.engine) as connection:
            self.audit.record_in(
                connection, AuditKind.EXPORT, owner,
                f"Subscription/{row.subscription_id} notification, attempt {row.attempts}: {sent.result}",
                resources=[f"{row.resource_type}/{row.resource_id}/_history/{row.version_id}",
                           f"Subscription/{row.subscription_id}"],
                patients=patients_of_json(body), outcome=Outcome.SUCCESS if sent.delivered else Outcome.SERIOUS_FAILURE,
                destination=sent.url,
            )
            active = connection.execute(select(fhir_subscriptions.c.active).where(
                fhir_subscriptions.c.subscription_id == row.subscription_id
            )).scalar()
            if sent.delivered or not active:  # turned off or deleted while it was being sent: not tried again
                connection.execute(delete(_OUTBOX).where(_OUTBOX.c.id == row.id))
            elif final:
                reason = f"{sent.result} ({row.attempts} attempts); the server stopped sending"
                self._set_status(connection, row.subscription_id, "error", reason)
            else:
                connection.execute(update(_OUTBOX).where(_OUTBOX.c.id == row.id).values(
                    not_before=now_micros() + self.policy.retry_micros(row.attempts)
                ))

    def _give_up(self, row: _Claimed, why: str) -> None:
        self._end(row.subscription_id, "error",
                  f"a notification failed {row.attempts} times ({why}); the server stopped sending")

    def _drop(self, row: _Claimed) -> None:
        with write_connection(self.engine) as connection:
            connection.execute(delete(_OUTBOX).where(_OUTBOX.c.id == row.id))

    def _end(self, subscription_id: str, status: str, reason: str | None) -> None:
        with write_connection(self.engine) as connection:
            self._set_status(connection, subscription_id, status, reason)

    def _set_status(self, connection: Connection, subscription_id: str, status: str, reason: str | None) -> None:
        """A new version of an active Subscription, `off` or `error` (with
        `Subscription.error` saying why), and nothing more sent for it. One
        that is not active (deleted, or changed by someone else meanwhile:
        theirs stands) only stops sending, as it should have."""
        current = self.store.lock_current(connection, "Subscription", [subscription_id]).get(subscription_id)
        subscription = None if current is None or current.body is None else fhir_json.loads(current.body)
        if subscription is not None and subscription.get("status") == "active":
            subscription["status"] = status
            if reason is not None:
                subscription["error"] = reason
            self.store.put_many(connection, [(subscription, subscription_id)], "PUT", locked={subscription_id: current})
            self.audit.record_in(connection, AuditKind.UPDATE, SERVER_AGENT,
                                 f"Subscription {status}{f': {reason}' if reason else ''}",
                                 resources=[f"Subscription/{subscription_id}"])
        connection.execute(update(fhir_subscriptions).where(fhir_subscriptions.c.subscription_id == subscription_id)
                           .values(active=False))
        drop_pending(connection, subscription_id)
