"""llama.cpp's own server (llama-server) as a process of ours: found, started on 127.0.0.1 at a free port with a
temporary folder (for the adapters written for it, and its log), waited for, and stopped. The llama.cpp serve engine
and ``eval --set engine=llama.cpp`` generate through it."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from orthopatch.errors import UserError
from orthopatch.models.embedded import cache_root

LLAMA_CPP_RELEASE = "0.3.36"  # the llama-cpp-python source release scripts/build-llama-server.sh builds from
START_TIMEOUT = 180.0  # seconds for llama-server to load the model and answer /health


def find_llama_server(given: str | None) -> Path:
    """--llama-server, else $ORTHOPATCH_LLAMA_SERVER, else scripts/build-llama-server.sh's build, else PATH."""
    built = cache_root() / "llama.cpp" / f"{LLAMA_CPP_RELEASE}-{os.uname().machine}" / "bin" / "llama-server"
    for candidate in (given, os.environ.get("ORTHOPATCH_LLAMA_SERVER"), built, shutil.which("llama-server")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
        if candidate and candidate in (given, os.environ.get("ORTHOPATCH_LLAMA_SERVER")):
            raise UserError("not an executable llama-server", path=candidate, field="--llama-server")
    raise UserError("llama-server was not found: build it with scripts/build-llama-server.sh (once per machine), "
                    "or give --llama-server PATH", field="--llama-server")


class LlamaServer:
    """One llama-server process on 127.0.0.1 with a temporary folder (its adapters, its log), both gone on stop()
    or when this process exits."""

    def __init__(self, binary: Path) -> None:
        self.binary, self.port = binary, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="orthopatch-llama-"))
        self.log_path = self.folder / "llama-server.log"
        self.process: subprocess.Popen | None = None
        atexit.register(self.stop)

    def start(self, args: list[str], timeout: float = START_TIMEOUT) -> None:
        command = [str(self.binary), "--host", "127.0.0.1", "--port", str(self.port), *args]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        self.stop()
        raise UserError(f"llama-server did not start ({' | '.join(tail) or 'no output'})", field="--engine")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slot_args(slots: int, context: int) -> list[str]:
    """A slot per row decoded together, each with room for the longest request (prompt and completion)."""
    return ["-np", str(slots), "-c", str(context * slots), "--no-webui"]


def lora_args(adapters: list[Path]) -> list[str]:
    """Adapters loaded at scale 0: each request names the scales it wants (every one it leaves out stays at 0)."""
    return [*(arg for adapter in adapters for arg in ("--lora", str(adapter))),
            *(["--lora-init-without-apply"] if adapters else [])]
