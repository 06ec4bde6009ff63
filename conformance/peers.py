"""A local Orthanc (Debian's `orthanc` and `orthanc-dicomweb`) with its own
configuration in a temporary folder, on loopback ports of its own: the peer
the suite is proved against, and the one the benchmarks compare with."""

import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import httpx

ORTHANC_BIN = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class PeerError(RuntimeError):
    pass


def orthanc_installed() -> bool:
    return Path(ORTHANC_BIN).is_file() and Path(ORTHANC_DICOMWEB_PLUGIN).is_file()


def stop_process(process: "subprocess.Popen[bytes] | None", grace_seconds: float = 60.0) -> None:
    """Ask a child to stop (SIGTERM), and kill it if it has not within the grace time."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalOrthanc:
    """`dicomweb_servers` registers remote DICOMweb servers under
    `DicomWeb.Servers` ({name: {"Url": ..., "Username": ..., "Password": ...}}),
    for Orthanc's /dicom-web/servers/{name}/stow, /qido and /retrieve calls."""

    def __init__(self, dicomweb_servers: dict[str, dict[str, Any]] | None = None, keep: bool = False) -> None:
        self.keep = keep
        self.folder = Path(tempfile.mkdtemp(prefix="medaiflow-orthanc-"))
        self.log_path = self.folder / "orthanc.log"
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.root}/dicom-web"
        self.startup_s = 0.0
        self.config: dict[str, Any] = {
            "Name": "MedAIFlowPeer",
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "Plugins": [ORTHANC_DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": dicomweb_servers or {}},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Self:
        if not orthanc_installed():
            raise PeerError(f"Orthanc is not installed ({ORTHANC_BIN}, {ORTHANC_DICOMWEB_PLUGIN})")
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config, indent=2))
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen([ORTHANC_BIN, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                             cwd=self.folder, stdin=subprocess.DEVNULL)
        started = time.perf_counter()
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.perf_counter() - started < timeout:
                if self.process.poll() is not None:
                    raise PeerError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
                try:
                    if client.get(f"{self.root}/system").status_code == 200:
                        self.startup_s = time.perf_counter() - started
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise PeerError(f"Orthanc was not ready after {timeout:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        stop_process(self.process)
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)

    def system(self) -> dict[str, Any]:
        return httpx.get(f"{self.root}/system", timeout=5, trust_env=False).json()  # type: ignore[no-any-return]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
