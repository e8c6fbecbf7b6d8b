"""Patch copies for the serve tests: another gate threshold, or no gate (servers run through
orthopatch.serve.process.ServerProcess)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from orthopatch.io import write_json_atomic
from orthopatch.patches.gate import GATE_CONFIG, GATE_WEIGHTS
from orthopatch.patches.manifest import MANIFEST, artifact_hashes


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
