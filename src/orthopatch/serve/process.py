"""A server in a subprocess on a free port of 127.0.0.1: started, waited for (``/health``), stopped with SIGTERM.
For load tests, benchmarks and the upstream tests, which must talk to a real server over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from orthopatch.models.llamacpp import free_port


class ServerProcess:
    """``command`` (given ``{port}`` to fill in) running until :meth:`stop`; ``url`` is its base URL. By default
    the command is ``orthopatch serve --port PORT ARGS``."""

    def __init__(self, *args: str, command: list[str] | None = None, env: dict[str, str] | None = None,
                 timeout: float = 180.0, ready_path: str = "/health") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if command is None:
            command = [sys.executable, "-m", "orthopatch.cli", "serve", "--port", "{port}", *args]
        command = [part.replace("{port}", str(self.port)) for part in command]
        handle, name = tempfile.mkstemp(prefix=f"orthopatch-server-{self.port}-", suffix=".log")
        self.log = Path(name)
        with os.fdopen(handle, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return  # it stopped by itself (a refused start: read returncode and output)
            try:
                if httpx.get(self.url + ready_path, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        output = self.output()[-3000:]
        self.stop()
        raise TimeoutError(f"the server did not answer {ready_path} within {timeout} s:\n{output}")

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (in-flight requests drain), then the exit code; the log file goes with the process."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.log.unlink(missing_ok=True)
        return code
