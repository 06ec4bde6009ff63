"""Settings, read from `MEDAIFLOW_*` environment variables.

Built by `load_settings()` at start-up, never at import time, so a test can
make a server with its own data directory and database.
"""

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_WILDCARD_HOSTS = frozenset(("0.0.0.0", "::", ""))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDAIFLOW_", extra="ignore")

    data_dir: Path = Path("var")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; SQLite under data_dir when unset"
    )
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(default=1, ge=1, description="server processes for `serve`")
    public_base_url: str | None = Field(
        default=None,
        description="the server's address as clients reach it (e.g. https://pacs.example.org/medaiflow);"
        " RetrieveURLs and BulkDataURIs use it instead of the request's Host and X-Forwarded-* headers",
    )
    cors_origins: str = Field(default="", description="comma-separated origins, or *")
    trusted_proxies: str = Field(
        default="",
        description="comma-separated addresses of reverse proxies whose X-Forwarded-For names the client"
        " (in the audit record and the per-address limits); none by default, so no client can name another",
    )
    max_stow_bytes: int = Field(default=4 * 1024**3, description="413 above this request size")
    fhir_max_body_bytes: int = Field(
        default=64 * 1024**2, description="413 above this FHIR request body size (a resource, a Bundle, a search form)"
    )
    qido_max_limit: int = 1000
    fhir_max_included: int = Field(
        default=1000, description="cap on _include/_revinclude resources per search page"
    )
    log_level: str = "INFO"

    # DIMSE gateway (server/dimse/)
    dimse_port: int | None = Field(
        default=None, ge=0, le=65535, description="the TCP port of the DIMSE gateway (C-ECHO, C-STORE, C-FIND) on"
        " `host`; unset: no gateway. Only registered peers (`medaiflow peers add`) may associate",
    )
    dimse_ae_title: str = Field(default="MEDAIFLOW", min_length=1, max_length=16,
                                description="the gateway's own AE title; associations calling another are rejected")
    dimse_find_max_matches: int = Field(
        default=10000, ge=1, description="a C-FIND matching more is refused (0xA700, Out of Resources) with nothing"
        " sent: DIMSE cannot page, and an answer is recorded whole before it goes out",
    )

    # Inference
    executor: Literal["local", "celery", "none"] = Field(
        default="local",
        description="who runs inference jobs: threads in the server, Celery workers (`medaiflow worker`), or"
        " nobody (`none`: this process neither starts nor runs jobs; they wait in the queue)",
    )
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", description="Celery broker (Redis or RabbitMQ)")
    broker_queue: str = Field(default="medaiflow-inference", description="the broker queue of this server's jobs")
    local_workers: int = Field(default=1, ge=1, description="job threads of the local executor")
    batch_size: int = Field(default=4, ge=1, description="jobs of one model a worker takes at once")
    job_processes: int | None = Field(
        default=None, ge=0, description="processes beside each worker that read series and write results, in"
        " parallel while the network runs (0: threads of the worker; unset: the cores beyond the first, shared among"
        " the job runners of all server processes, up to 8 each; none below 4 cores)",
    )
    study_quiet_seconds: float = Field(default=10.0, ge=0, description="a study is complete when quiet this long")
    job_max_attempts: int = Field(default=3, ge=1)
    job_lease_seconds: float = Field(default=120.0, gt=0)
    job_timeout_seconds: float = Field(default=900.0, gt=0)
    job_retry_backoff_seconds: float = Field(default=5.0, ge=0)
    report_status: Literal["preliminary", "final"] = "preliminary"
    demo_model: bool = Field(default=True, description="register and activate the shipped demo model on first start")

    # FHIR Subscriptions (rest-hook)
    subscription_endpoints: str = Field(
        default="", description="comma-separated URL prefixes a Subscription's rest-hook endpoint must start with;"
        " none by default, so that no client can make the server send data anywhere (SSRF)",
    )
    subscription_attempts: int = Field(default=5, ge=1, description="sends of one notification before the"
                                       " Subscription is set to error")
    subscription_retry_seconds: float = Field(default=2.0, ge=0, description="wait before the first retry, doubled"
                                              " at each further one")
    subscription_timeout_seconds: float = Field(default=5.0, gt=0, description="to connect, send or read an answer")

    # FHIR Bulk Data export ($export)
    export_retention_hours: float = Field(default=24.0, gt=0, description="how long an export's status and files"
                                          " are kept after its kick-off, then removed")
    export_max_per_caller: int = Field(default=2, ge=1, description="exports a user or client may have queued or"
                                       " running at once; more are refused with 429 and Retry-After")

    # Identities
    token_seconds: int = Field(default=300, ge=30, le=3600, description="lifetime of issued access tokens")
    admin_password: str | None = Field(
        default=None, description="the first admin's password on a first start (else one is generated and printed)"
    )

    requests_per_second: float = Field(
        default=0.0, ge=0, description="requests each authenticated client may make per second, on average"
        " (0: no limit); more get 429 with Retry-After",
    )
    request_burst: int = Field(default=100, ge=1, description="requests a client may make at once within that rate")

    # Audit trail
    audit_checkpoint_every: int = Field(default=1000, ge=1, description="a signed checkpoint every N events")
    audit_checkpoint_seconds: float = Field(default=10.0, gt=0, description="and at least this often while events come")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'medaiflow.sqlite3').resolve()}"

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def subscription_endpoint_list(self) -> list[str]:
        return [prefix.strip() for prefix in self.subscription_endpoints.split(",") if prefix.strip()]

    @property
    def public_root(self) -> str:
        """The root for links made outside a request (the FHIR Endpoint's
        address, the audit source, the token issuer). A wildcard address is
        where the server listens, not where a client can reach it: the
        machine's name stands for it unless MEDAIFLOW_PUBLIC_BASE_URL says."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = socket.gethostname() if self.host in _WILDCARD_HOSTS else self.host
        # An IPv6 address is bracketed in a URL (RFC 3986 §3.2.2).
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "dicom"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
