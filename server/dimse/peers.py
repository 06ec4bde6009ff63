"""The registry of remote DICOM applications (Orthanc's DicomModalities,
dcm4chee's AE list): DIMSE carries no credentials, so a peer is known by its
calling AE title and the address it calls from, and acts with the rights of
one of the server's roles (server/auth/scopes.py), as a system client would.

A peer's host is an IP address, a network (`10.0.0.0/24`) or a host name,
resolved when the peer calls, so that a modality with a DHCP reservation and
a DNS name keeps working when its address changes.
"""

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from server.auth.access import Principal
from server.auth.scopes import Role, role_grant
from server.db import reading, write_connection
from server.tables import dicom_peers

_AE_TITLE_LIMIT = 16


class PeerError(ValueError):
    """A peer that cannot be registered or removed as asked."""


class PeerExists(PeerError):
    """An AE title registered already."""


class PeerNotFound(PeerError):
    """No peer has the AE title."""


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    role: Role

    def principal(self) -> Principal:
        """Who the peer acts as: a system client with its role's widest scopes."""
        return Principal(self.ae_title, self.role.value, role_grant(self.role, "system"), client=True)

    def calls_from(self, address: str) -> bool:
        """Whether `address` (the peer's IP address as the connection shows it) is this peer's host."""
        try:
            calling = ipaddress.ip_address(address)
        except ValueError:
            return False
        # Listening on `::`, an IPv4 peer calls from an IPv4-mapped address: it is the IPv4 one that is registered.
        if isinstance(calling, ipaddress.IPv6Address) and calling.ipv4_mapped is not None:
            calling = calling.ipv4_mapped
        try:
            return calling in ipaddress.ip_network(self.host, strict=False)
        except ValueError:
            pass  # a host name
        try:
            resolved = {info[4][0] for info in socket.getaddrinfo(self.host, None)}
        except OSError:
            return False
        return any(calling == ipaddress.ip_address(str(found).split("%")[0]) for found in resolved)

    def to_json(self) -> dict[str, str]:
        return {"aeTitle": self.ae_title, "host": self.host, "role": self.role.value}


def checked_ae_title(title: str) -> str:
    """An AE title as PS3.5 Table 6.2-1 allows it: 1 to 16 characters of the
    default repertoire, no backslash, not only spaces; spaces around it are
    not significant."""
    stripped = title.strip(" ")
    if not stripped or len(stripped) > _AE_TITLE_LIMIT:
        raise PeerError(f"an AE title has 1 to {_AE_TITLE_LIMIT} characters, not {len(stripped)}")
    if "\\" in stripped or any(not (" " <= char <= "~") for char in stripped):
        raise PeerError(f"AE title {stripped!r} holds a backslash or a character outside ISO 646")
    return stripped


def _checked_host(host: str) -> str:
    host = host.strip()
    if not host or len(host) > 255 or any(char.isspace() for char in host):
        raise PeerError(f"{host!r} is no IP address, network or host name")
    return host


def _now() -> int:
    return time.time_ns() // 1000


class Peers:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Told of every registration and removal, in its transaction (the audit trail).
        self.on_change: Callable[[Connection, str], None] | None = None

    def add(self, ae_title: str, host: str, role: Role) -> Peer:
        peer = Peer(checked_ae_title(ae_title), _checked_host(host), role)
        try:
            with write_connection(self.engine) as connection:
                connection.execute(insert(dicom_peers).values(
                    ae_title=peer.ae_title, host=peer.host, role=role.value, created_at=_now()))
                self._changed(connection, f"DICOM peer {peer.ae_title} added: host {peer.host}, role {role.value}")
        except IntegrityError as error:
            raise PeerExists(f"a peer with AE title {peer.ae_title} is registered already") from error
        return peer

    def remove(self, ae_title: str) -> None:
        title = ae_title.strip(" ")
        with write_connection(self.engine) as connection:
            removed = connection.execute(delete(dicom_peers).where(dicom_peers.c.ae_title == title)).rowcount
            if removed:
                self._changed(connection, f"DICOM peer {title} removed")
        if not removed:
            raise PeerNotFound(f"there is no peer with AE title {title!r}")

    def find(self, ae_title: str) -> Peer | None:
        with reading(self.engine) as connection:
            row = connection.execute(select(dicom_peers).where(dicom_peers.c.ae_title == ae_title.strip(" "))).first()
        return None if row is None else Peer(row.ae_title, row.host, Role(row.role))

    def all(self) -> list[Peer]:
        with reading(self.engine) as connection:
            rows = connection.execute(select(dicom_peers).order_by(dicom_peers.c.ae_title)).all()
        return [Peer(row.ae_title, row.host, Role(row.role)) for row in rows]

    def _changed(self, connection: Connection, description: str) -> None:
        if self.on_change is not None:
            self.on_change(connection, description)
