"""`medaiflow` command line: serve, db upgrade, import, models, infer, worker."""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.engine import make_url

from fhir_mappings.errors import FhirError
from inference.errors import InferenceError
from server.auth.identities import IdentityError
from server.dimse.peers import PeerError
from server.jobs.cli import add_commands as add_inference_commands
from server.jobs.registry import ActivationRefused, ModelNotFound
from server.settings import load_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import build_services, create_app
    from server.logs import configure_logging
    from server.migrate import upgrade
    from server.settling import settle_process

    # The listening address is a setting, not only a uvicorn argument: the
    # FHIR Endpoints, the audit source and the token issuer are named by it.
    chosen = {"workers": args.workers, "host": args.host, "port": args.port}
    settings = load_settings(**{name: value for name, value in chosen.items() if value})
    configure_logging(settings.log_level)
    services = build_services(settings)
    upgrade(services.engine)
    # Recovery runs once, here, before any worker accepts a request; so does
    # the demo model's first registration, which each worker would race for.
    services.ingestor.recover()
    if settings.demo_model:
        services.jobs.ensure_demo_model()
    _first_admin(services, settings.admin_password)
    listen = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_keep_alive": 30,
        "date_header": False,  # the app stamps its own (server/date_header.py)
        # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: any local
        # process could then name another client to the audit trail and the login limits.
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": settings.trusted_proxies or None,
    }
    if settings.workers > 1:
        services.engine.dispose()
        # Each worker process builds its own app (engines and pools are per
        # process) from the environment, which must then say where it listens.
        os.environ["MEDAIFLOW_HOST"], os.environ["MEDAIFLOW_PORT"] = listen["host"], str(listen["port"])
        uvicorn.run("server.app:create_app_from_environment", factory=True, workers=settings.workers, **listen)
    else:
        app = create_app(settings, services)
        settle_process()
        uvicorn.run(app, **listen)
    return 0


def _first_admin(services, password: str | None) -> None:  # type: ignore[no-untyped-def]
    """With no user at all, an `admin`: MEDAIFLOW_ADMIN_PASSWORD, or a generated password shown once."""
    from server.auth.scopes import Role

    if services.auth.identities.any_user():
        return
    chosen = services.auth.identities.add_user("admin", Role.ADMIN, password)
    if password is None:
        print(f"medaiflow: created user 'admin'; its password (shown once): {chosen}", file=sys.stderr, flush=True)


def _db_upgrade(_: argparse.Namespace) -> int:
    from server.db import make_engine
    from server.migrate import upgrade

    settings = load_settings()
    # The default SQLite file lives in the data directory.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    print("database schema is up to date")
    return 0


def _import(args: argparse.Namespace) -> int:
    from server.app import build_services
    from server.bulk_import import import_paths
    from server.migrate import upgrade

    settings = load_settings()
    services = build_services(settings)
    try:
        upgrade(services.engine)
        summary = import_paths(services, [Path(path) for path in args.paths], show_progress=not args.quiet)
    finally:
        services.engine.dispose()
    print(summary.describe())
    # Non-zero when anything was left out, so scripts notice; the summary says what.
    return 0 if summary.rejected == 0 else 1


def _with_services(work):  # type: ignore[no-untyped-def]
    """The server's own services, so that each change is audited as the server audits it."""
    from server.app import build_services
    from server.migrate import upgrade

    services = build_services(load_settings())
    try:
        upgrade(services.engine)
        return work(services)
    finally:
        services.engine.dispose()


def _with_identities(work):  # type: ignore[no-untyped-def]
    return _with_services(lambda services: work(services.auth.identities))


def _password_from_stdin() -> str | None:
    """A password piped in (`echo ... | medaiflow users add`), or None to generate one."""
    if sys.stdin is None or sys.stdin.isatty():
        return None
    text = sys.stdin.readline().rstrip("\r\n")
    return text or None


def _users_add(args: argparse.Namespace) -> int:
    from server.auth.scopes import Role

    given = _password_from_stdin()
    password = _with_identities(lambda identities: identities.add_user(args.name, Role(args.role), given))
    print(f"user {args.name} ({args.role}) added")
    if given is None:
        print(f"password (shown once): {password}")
    return 0


def _users_list(_: argparse.Namespace) -> int:
    for name, role, disabled in _with_identities(lambda identities: identities.users()):
        print(f"{name:32} {role.value:12} {'disabled' if disabled else 'enabled'}")
    return 0


def _users_disable(args: argparse.Namespace) -> int:
    _with_identities(lambda identities: identities.disable_user(args.name))
    print(f"user {args.name} disabled")
    return 0


def _users_passwd(args: argparse.Namespace) -> int:
    password = _password_from_stdin()
    if password is None:
        print("medaiflow: give the new password on standard input", file=sys.stderr)
        return 2
    _with_identities(lambda identities: identities.set_password(args.name, password))
    print(f"password of {args.name} changed")
    return 0


def _clients_add(args: argparse.Namespace) -> int:
    key_set = _key_set_file(args.jwks) if args.jwks else None
    client_id, secret = _with_identities(lambda identities: identities.add_client(
        args.name, args.scopes, key_set, args.redirect_uri, args.public))
    print(f"client id: {client_id}")
    if secret is not None:
        print(f"secret (shown once): {secret}")
    return 0


def _clients_keys(args: argparse.Namespace) -> int:
    key_set = _key_set_file(args.jwks)
    _with_identities(lambda identities: identities.set_client_keys(args.client_id, key_set))
    print(f"client {args.client_id} now signs with the keys of {args.jwks}")
    return 0


def _key_set_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise IdentityError(f"cannot read the key set {path}: {error}") from error


def _clients_list(_: argparse.Namespace) -> int:
    for client in _with_identities(lambda identities: identities.clients()):
        state = "disabled" if client.disabled else "enabled"
        print(f"{client.client_id:40} {state:8} {client.proof:6} {client.scopes}")
        for uri in client.redirect_uris:
            print(f"    redirect URI {uri}")
    return 0


def _clients_disable(args: argparse.Namespace) -> int:
    _with_identities(lambda identities: identities.disable_client(args.client_id))
    print(f"client {args.client_id} disabled")
    return 0


def _peers_add(args: argparse.Namespace) -> int:
    from server.auth.scopes import Role

    peer = _with_services(lambda services: services.peers.add(args.ae_title, args.host, Role(args.role)))
    print(f"peer {peer.ae_title} ({peer.role.value}) may associate from {peer.host}")
    return 0


def _peers_list(_: argparse.Namespace) -> int:
    for peer in _with_services(lambda services: services.peers.all()):
        print(f"{peer.ae_title:16} {peer.role.value:12} {peer.host}")
    return 0


def _peers_remove(args: argparse.Namespace) -> int:
    _with_services(lambda services: services.peers.remove(args.ae_title))
    print(f"peer {args.ae_title} removed: its associations are rejected from now on")
    return 0


def _keys_rotate(_: argparse.Namespace) -> int:
    from server.auth.tokens import TokenIssuer

    settings = load_settings()
    kid = TokenIssuer(settings.data_dir / "jwt-keys", settings.public_root).rotate()
    print(f"new signing key {kid}; tokens signed by the older keys stay valid until they expire "
          f"(remove a key's file from {settings.data_dir / 'jwt-keys'} to retire it)")
    return 0


def _audit_verify(_: argparse.Namespace) -> int:
    from server.app import build_services
    from server.migrate import upgrade

    settings = load_settings()
    database = make_url(settings.resolved_database_url)
    if database.get_backend_name() == "sqlite" and not Path(database.database or "").is_file():
        # Verifying would create an empty database and call it intact.
        print(f"medaiflow: there is no database at {database.database}; is MEDAIFLOW_DATA_DIR right?", file=sys.stderr)
        return 2
    services = build_services(settings)
    try:
        upgrade(services.engine)
        verification = services.audit.chain.verify()
    finally:
        services.engine.dispose()
    print(f"{verification.events} events, {verification.checkpoints} signed checkpoints")
    if verification.intact:
        print("the audit trail is intact")
        return 0
    print(f"BROKEN at sequence {verification.first_broken}: {verification.problem}")
    return 1


def _conformance(args: argparse.Namespace) -> int:
    from conformance import runner
    from server.fresh_conformance import run_against_fresh_server

    return run_against_fresh_server(args) if args.fresh else runner.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medaiflow", description="MedAIFlow DICOMweb and FHIR server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="migrate the database and run the server")
    serve.add_argument("--host", help="address to listen on (default: MEDAIFLOW_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: MEDAIFLOW_PORT or 8080)")
    serve.add_argument("--workers", type=int, help="server processes (default: MEDAIFLOW_WORKERS or 1)")
    serve.set_defaults(run=_serve)
    db = commands.add_parser("db", help="database administration").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply the Alembic migrations").set_defaults(run=_db_upgrade)
    importer = commands.add_parser(
        "import",
        help="bulk-load DICOM files or folders (recursive)",
        description="Store Part 10 files as STOW-RS would; exits 1 if any file was rejected.",
    )
    importer.add_argument("paths", nargs="+", metavar="PATH", help="a DICOM file, or a folder searched recursively")
    importer.add_argument("--quiet", action="store_true", help="no progress bar")
    importer.set_defaults(run=_import)
    add_inference_commands(commands)
    from server.auth.scopes import Role

    user_commands = commands.add_parser("users", help="people and their roles").add_subparsers(
        dest="users_command", required=True)
    add_user = user_commands.add_parser("add", help="add a user (password from standard input, or generated and shown once)")
    add_user.add_argument("name")
    add_user.add_argument("--role", required=True, choices=[role.value for role in Role])
    add_user.set_defaults(run=_users_add)
    user_commands.add_parser("list", help="users, roles, enabled or not").set_defaults(run=_users_list)
    disable = user_commands.add_parser("disable", help="refuse a user's logins from now on")
    disable.add_argument("name")
    disable.set_defaults(run=_users_disable)
    passwd = user_commands.add_parser("passwd", help="set a user's password (from standard input)")
    passwd.add_argument("name")
    passwd.set_defaults(run=_users_passwd)
    client_commands = commands.add_parser("clients", help="system clients (an EHR, a PACS)").add_subparsers(
        dest="clients_command", required=True)
    add_client = client_commands.add_parser("add", help="add a client; its id and secret are shown once")
    add_client.add_argument("name")
    add_client.add_argument("--scopes", required=True, help='SMART scopes, e.g. "system/DiagnosticReport.rs system/Task.cu system/ImagingStudy.r"')
    add_client.add_argument("--jwks", metavar="FILE", help="the client's public keys (a JWK Set, RS384 or ES384) for "
                            "SMART Backend Services: it then authenticates with signed assertions, and gets no secret")
    add_client.add_argument("--redirect-uri", action="append", default=[], metavar="URL",
                            help="an app that logs users in (SMART App Launch): where it gets its code back, compared "
                            "exactly; https, or http on the loopback; may be given again")
    add_client.add_argument("--public", action="store_true", help="an app that can keep no secret (in a browser, on "
                            "a phone): it gets none, and proves itself with PKCE alone")
    add_client.set_defaults(run=_clients_add)
    client_keys = client_commands.add_parser("keys", help="replace a client's public keys (SMART Backend Services)")
    client_keys.add_argument("client_id")
    client_keys.add_argument("jwks", metavar="FILE", help="a JWK Set of public keys")
    client_keys.set_defaults(run=_clients_keys)
    client_commands.add_parser(
        "list", help="clients, enabled or not, how each proves who it is (secret, keys, public), scopes, redirect URIs"
    ).set_defaults(run=_clients_list)
    disable_client = client_commands.add_parser("disable", help="refuse a client's secret from now on")
    disable_client.add_argument("client_id")
    disable_client.set_defaults(run=_clients_disable)
    peer_commands = commands.add_parser(
        "peers", help="remote DICOM AEs the DIMSE gateway lets in (a modality, a PACS)").add_subparsers(
        dest="peers_command", required=True)
    add_peer = peer_commands.add_parser("add", help="let an AE title associate from a host, with a role's rights")
    add_peer.add_argument("ae_title")
    add_peer.add_argument("--host", required=True, help="its IP address, network (10.0.0.0/24) or host name")
    add_peer.add_argument("--role", required=True, choices=[role.value for role in Role],
                          help="its rights, as a user's: modality may C-STORE, clinician C-FIND, admin both")
    add_peer.set_defaults(run=_peers_add)
    peer_commands.add_parser("list", help="registered peers, roles and hosts").set_defaults(run=_peers_list)
    remove_peer = peer_commands.add_parser("remove", help="reject a peer's associations from now on")
    remove_peer.add_argument("ae_title")
    remove_peer.set_defaults(run=_peers_remove)
    keys = commands.add_parser("keys", help="token signing keys").add_subparsers(dest="keys_command", required=True)
    keys.add_parser("rotate", help="sign new tokens with a new key (the JWKS publishes old and new)").set_defaults(
        run=_keys_rotate)
    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(dest="audit_command", required=True)
    audit.add_parser(
        "verify", help="recompute the hash chain and its signed checkpoints; exit 1 at the first broken event"
    ).set_defaults(run=_audit_verify)
    from conformance import runner

    conformance = commands.add_parser(
        "conformance", help="run the conformance suite against a DICOMweb and FHIR server (this one, or any)",
        description="Exit status 0 only when no case failed.")
    runner.add_arguments(conformance)
    conformance.add_argument("--fresh", action="store_true",
                             help="start a MedAIFlow of its own (empty, on a free port) and run against it")
    conformance.set_defaults(run=_conformance)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (InferenceError, FhirError, ModelNotFound, ActivationRefused, IdentityError, PeerError) as error:
        print(f"medaiflow: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
