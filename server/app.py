"""The composition root: `create_app(settings)` wires settings, database,
storage and the routers into one ASGI app. Nothing here runs at import time."""

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from server import health
from server.db import make_engine
from server.dicomweb.context import Services
from server.dicomweb.routes import router as dicomweb_router
from server.errors import install_error_handlers
from server.ingest import Ingestor
from server.logs import RequestLogMiddleware
from server.settings import Settings, load_settings
from server.storage import FileStore


def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    store = FileStore(settings.storage_dir)
    store.prepare()
    return Services(settings=settings, engine=engine, store=store, ingestor=Ingestor(engine, store))


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or (services.settings if services else load_settings())
    services = services or build_services(settings)
    app = FastAPI(title="MedAIFlow", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.services = services
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(dicomweb_router, prefix="/dicom-web")
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Accept", "Content-Type", "Authorization", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Content-Location", "Warning"],
        )
    app.add_middleware(RequestLogMiddleware)
    return app
