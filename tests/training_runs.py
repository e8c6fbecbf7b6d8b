"""Training runs in a subprocess, for the crash and fault tests: the command, a run with a fault injected through
the environment, the uninterrupted reference patch's sha256."""

import json
import os
import subprocess
import sys
from pathlib import Path

from orthopatch.patches.manifest import MANIFEST


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orthopatch.cli", *args, "--quiet"]


def train_cmd(model, data, out, *extra: str) -> list[str]:
    return cli("train", "--model", str(model), "--data", str(data), "--output", str(out), "--set", "device=cpu",
               "--set", "batch_size=2", "--set", "epochs=2", "--set", "lr=0.01", "--set", "lora.r=2",
               "--set", "checkpoint_every=3", *extra)


def run(cmd: list[str], fault: str | None = None, variable: str = "ORTHOPATCH_FAULT") -> subprocess.CompletedProcess:
    """``variable`` names the fault switch: ``ORTHOPATCH_FAULT`` or the older ``ORTHOPATCH_FAULT_AFTER_STEPS``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORTHOPATCH_FAULT")}
    if fault:
        env[variable] = fault
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def adapter_sha(out: Path) -> str:
    return json.loads((out / MANIFEST).read_text())["files"]["adapter_model.safetensors"]


def reference_run(model, root: Path, *extra: str) -> tuple[Path, str]:
    """Twelve placeholder examples and the sha256 of the patch an uninterrupted run trains on them."""
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"placeholder request {i}", "response": "I can't help with that."})
                            + "\n" for i in range(12)))
    result = run(train_cmd(model, data, root / "uninterrupted", *extra))
    assert result.returncode == 0, result.stderr
    return data, adapter_sha(root / "uninterrupted")
