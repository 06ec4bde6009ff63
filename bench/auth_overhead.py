"""What authentication adds to a request: the median time of the middleware's
authentication and authorization step, per credential kind.

Run from the repository root:

    .venv/bin/python -m bench.auth_overhead [--requests 20000]

The step is timed as the server runs it (`AuthMiddleware._authenticate` and
the permission check), on a Bearer token (an ES256 signature verified per
request) and on HTTP Basic (Argon2id once, then a one-minute cache keyed by
the header's SHA-256). The first Basic request, which pays for Argon2, is
reported on its own. The goal of issue 5: under 1 ms median per request.
"""

import argparse
import asyncio
import base64
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args(argv)

    from server.app import build_services
    from server.auth.access import required_permission
    from server.auth.middleware import AuthMiddleware
    from server.auth.scopes import Role, role_grant
    from server.migrate import upgrade
    from server.settings import Settings

    with tempfile.TemporaryDirectory() as directory:
        services = build_services(Settings(data_dir=Path(directory), executor="none", demo_model=False))
        upgrade(services.engine)
        services.auth.identities.add_user("reader", Role.CLINICIAN, "a long benchmark password")
        middleware = AuthMiddleware(lambda *_: None, services.auth)  # type: ignore[arg-type]
        token, _ = services.auth.issuer.issue("reader", "clinician", str(role_grant(Role.CLINICIAN)), client=False)
        basic = "Basic " + base64.b64encode(b"reader:a long benchmark password").decode()

        def scope(authorization: str) -> dict:
            return {"type": "http", "method": "GET", "path": "/fhir/ImagingStudy/1.2.3", "client": ("127.0.0.1", 1),
                    "headers": [(b"authorization", authorization.encode())]}

        async def once(authorization: str) -> float:
            started = time.perf_counter()
            principal = await middleware._authenticate(scope(authorization))
            permission = required_permission("GET", "/fhir/ImagingStudy/1.2.3")
            assert permission is not None and principal.may(permission)
            return time.perf_counter() - started

        async def run() -> dict[str, float]:
            first_basic = await once(basic)
            results = {"Basic, first request (Argon2id)": first_basic * 1000}
            for name, credential in (("Bearer token (ES256)", f"Bearer {token}"), ("Basic, cached", basic)):
                samples = [await once(credential) for _ in range(args.requests)]
                results[f"{name}, median"] = statistics.median(samples) * 1000
                results[f"{name}, p99"] = sorted(samples)[int(0.99 * len(samples))] * 1000
            return results

        results = asyncio.run(run())
        services.engine.dispose()
    for name, milliseconds in results.items():
        print(f"{name:40} {milliseconds:8.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
