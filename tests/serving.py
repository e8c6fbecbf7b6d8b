"""Servers in subprocesses for the serve tests and benchmark: start one on a free port of 127.0.0.1, wait for
/health, stop it with SIGTERM; and patch copies with another gate threshold or without their gate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from orthopatch.io import write_json_atomic
from orthopatch.patches.gate import GATE_CONFIG, GATE_WEIGHTS
from orthopatch.patches.manifest import MANIFEST, artifact_hashes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``orthopatch serve ARGS`` on 127.0.0.1:PORT; ``url`` is its base URL."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"orthopatch-serve-{self.port}.log"
        command = [sys.executable, "-m", "orthopatch.cli", "serve", "--port", str(self.port), *args]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return  # it stopped (a test of a refused start reads returncode and output)
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the server did not answer /health within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def rewrite_patch(source: Path, target: Path, *, threshold: float | None = None, drop_gate: bool = False) -> Path:
    """A copy of a gated patch with another gate threshold, or without its gate (a plain LoRA patch), re-hashed
    as orthopatch would write it."""
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST).read_text())
    if drop_gate:
        (target / GATE_CONFIG).unlink()
        (target / GATE_WEIGHTS).unlink()
        manifest["kind"] = "lora"
        manifest.pop("gate", None)
    if threshold is not None:
        gate = json.loads((target / GATE_CONFIG).read_text())
        write_json_atomic(target / GATE_CONFIG, {**gate, "threshold": threshold})
        manifest["gate"]["threshold"] = threshold
    (target / MANIFEST).unlink()
    manifest["files"] = artifact_hashes(target)
    write_json_atomic(target / MANIFEST, manifest)
    return target
