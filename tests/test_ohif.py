"""OHIF Viewer, the prebuilt `@ohif/app` from npm, in Debian's headless
Chromium driven by Playwright, against MedAIFlow over DICOMweb from another
origin (CORS, with HTTP Basic credentials): the study list shows our study, opening it renders
the CT (a screenshot that is not blank), and the SEG series our model made is
there to load."""

import base64
import functools
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from conformance.peers import free_port
from server.app import build_services, create_app
from server.auth.scopes import Role
from server.migrate import upgrade
from server.settings import Settings
from tests.conftest import admin_headers, served
from tests.dicom_files import multipart_body
from tests.inference_checks import phantom, series_bytes, study_uid

REPO = Path(__file__).resolve().parent.parent
OHIF_DIST = REPO / ".cache" / "ohif" / "package" / "dist"
CHROMIUM = "/usr/bin/chromium"
_VIEWER_PASSWORD = "a long viewer password"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="Debian's chromium is not installed")


def _app_config(dicomweb: str) -> str:
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "medaiflow",
        "configuration": {
            "friendlyName": "MedAIFlow", "name": "medaiflow",
            "wadoUriRoot": dicomweb, "qidoRoot": dicomweb, "wadoRoot": dicomweb,
            "qidoSupportsIncludeField": True, "imageRendering": "wadors", "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True, "supportsFuzzyMatching": False, "supportsWildcard": True,
            "staticWado": False, "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        },
    }
    config = {"routerBasename": None, "extensions": [], "modes": [], "showStudyList": True,
              "maxNumberOfWebWorkers": 1, "defaultDataSourceName": "medaiflow", "dataSources": [source]}
    return f"window.config = {json.dumps(config)};\n"


class _ViewerFiles(SimpleHTTPRequestHandler):
    """The dist folder, our app-config.js in place of its own, and index.html
    for the single-page app's routes."""

    config = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/app-config.js":
            body = self.config.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/javascript")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if not (OHIF_DIST / path.lstrip("/")).is_file():
            self.path = "/index.html"
        super().do_GET()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def viewer_and_server(settings: Settings) -> Iterator[tuple[str, str, Any]]:
    if not (OHIF_DIST / "index.html").is_file():
        pytest.fail(f"the OHIF viewer is not unpacked under {OHIF_DIST}: run `make test`")
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    services = build_services(settings.model_copy(update={
        "executor": "local", "demo_model": True, "study_quiet_seconds": 0.3, "cors_origins": origin}))
    upgrade(services.engine)
    services.auth.identities.add_user("viewer", Role.CLINICIAN, _VIEWER_PASSWORD)
    try:
        with served(create_app(services=services)) as base:
            handler = type("Files", (_ViewerFiles,), {"config": _app_config(f"{base}/dicom-web")})
            files = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(OHIF_DIST)))
            thread = threading.Thread(target=files.serve_forever, daemon=True)
            thread.start()
            try:
                yield origin, base, services
            finally:
                files.shutdown()
    finally:
        services.engine.dispose()


def _segmented_study(base: str, services: Any) -> str:
    study = phantom(seed=71, lesions=2)
    body, content_type = multipart_body(series_bytes(study))
    headers = admin_headers(services)
    assert httpx.post(f"{base}/dicom-web/studies", content=body, headers={**headers, "Content-Type": content_type},
                      timeout=120).status_code == 200
    uid = study_uid(study)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        series = httpx.get(f"{base}/dicom-web/studies/{uid}/series", headers=headers).json()
        if any(item["00080060"]["Value"][0] == "SEG" for item in series):
            return uid
        time.sleep(0.5)
    raise AssertionError("the model made no SEG series in 120 s")


def _screenshot(locator: Any) -> bytes | None:
    """None when OHIF replaced the element while it was being taken (it
    re-renders its viewports as data arrives): the caller tries again."""
    try:
        return locator.screenshot(timeout=10_000)  # type: ignore[no-any-return]
    except PlaywrightError:
        return None


def _wait_for(locator: Any, timeout_ms: int, console: list[str], failures: list[str]) -> None:
    """On a timeout, keep a screenshot and say what the browser logged."""
    try:
        locator.wait_for(timeout=timeout_ms)
    except PlaywrightTimeout:
        locator.page.screenshot(path=str(REPO / ".cache" / "ohif-debug.png"))
        raise AssertionError("\n".join(console[-30:] + failures)) from None


def _coloured_share(png: bytes) -> float:
    """The share of pixels that are not grey: the segmentation's colour."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return float((spread > 60).mean())


def _variance(png: bytes) -> float:
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64).var())


def test_ohif_lists_opens_and_renders_the_segmented_study(viewer_and_server):
    origin, base, services = viewer_and_server
    uid = _segmented_study(base, services)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader"])
        try:
            # OHIF's own credentials come from OpenID Connect; without one, the
            # browser sends the viewer's Basic credentials, as a session would.
            credentials = base64.b64encode(f"viewer:{_VIEWER_PASSWORD}".encode()).decode()
            context = browser.new_context(viewport={"width": 1280, "height": 800},
                                          extra_http_headers={"Authorization": f"Basic {credentials}"})
            page = context.new_page()
            failures: list[str] = []
            page.on("response", lambda response: failures.append(f"{response.status} {response.url}")
                    if response.url.startswith(base) and response.status >= 400 else None)
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("requestfailed", lambda request: console.append(f"failed: {request.url} {request.failure}"))
            page.goto(f"{origin}/", wait_until="domcontentloaded")
            # The study list shows our study, with the model's SEG among its modalities.
            _wait_for(page.get_by_text("Phantom, 71").first, 60_000, console, failures)
            _wait_for(page.get_by_text("CT\\SEG").first, 5_000, console, failures)

            page.goto(f"{origin}/viewer?StudyInstanceUIDs={uid}", wait_until="domcontentloaded")
            _wait_for(page.get_by_text("SEG", exact=True).first, 90_000, console, failures)  # the SEG series is offered
            viewport = page.locator("canvas").first
            viewport.wait_for(timeout=60_000)
            deadline, variance = time.monotonic() + 60, 0.0
            while time.monotonic() < deadline and variance < 50:
                shot = _screenshot(viewport)
                variance = _variance(shot) if shot else 0.0
                time.sleep(1)
            assert variance >= 50, f"the viewport stayed blank (pixel variance {variance:.1f})"
            for dismiss in ("Skip all", "Confirm and hide"):  # the first-visit tour and notice
                control = page.get_by_text(dismiss, exact=True)
                if control.count():
                    control.first.click()
            page.get_by_text("AI segmentation").first.dblclick()  # load the SEG over the CT
            page.get_by_role("button", name="Yes").first.click(timeout=30_000)  # "open this Segmentation?"
            deadline, coloured = time.monotonic() + 60, 0.0
            while time.monotonic() < deadline and coloured == 0:
                shot = _screenshot(viewport)
                coloured = _coloured_share(shot) if shot else 0.0
                time.sleep(1)
            page.screenshot(path=str(REPO / ".cache" / "ohif-last-screenshot.png"))
            assert coloured > 0, "the segmentation was not drawn over the CT"
            # OHIF warns when a SEG recommends no display colour: ours does.
            assert page.get_by_text("RecommendedDisplayCIELabValue").count() == 0
            assert failures == [], failures
        finally:
            browser.close()
