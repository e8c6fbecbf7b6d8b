"""Crash safety and determinism: a killed training run resumes to the same patch; nothing half-written remains."""

import json
import os
import signal
import subprocess
import sys

import pytest

from orthopatch.models import embedded
from orthopatch.patches.manifest import MANIFEST
from orthopatch.train.checkpoint import checkpoint_root


def train_cmd(model, data, out):
    return [sys.executable, "-m", "orthopatch.cli", "train", "--model", str(model), "--data", str(data),
            "--output", str(out), "--quiet", "--set", "device=cpu", "--set", "batch_size=2", "--set", "epochs=2",
            "--set", "lr=0.01", "--set", "lora.dropout=0.1", "--set", "lora.r=2", "--set", "checkpoint_every=3"]


def run(cmd, fault=None):
    env = {k: v for k, v in os.environ.items() if k != "ORTHOPATCH_FAULT_AFTER_STEPS"}
    if fault:
        env["ORTHOPATCH_FAULT_AFTER_STEPS"] = fault
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def adapter_sha(out):
    return json.loads((out / MANIFEST).read_text())["files"]["adapter_model.safetensors"]


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"placeholder request {i}", "response": "I can't help with that."})
                            + "\n" for i in range(12)))
    out = root / "uninterrupted"
    result = run(train_cmd(tiny_model, data, out))
    assert result.returncode == 0, result.stderr
    return data, adapter_sha(out)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_interrupted_training_resumes_to_the_same_patch(tiny_model, reference, tmp_path, how):
    data, expected = reference
    out = tmp_path / "patch"
    killed = run(train_cmd(tiny_model, data, out), fault=f"7:{how}")
    assert killed.returncode != 0
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".patch.tmp")]
    assert [p.name for p in checkpoint_root(out).iterdir()] == ["step-000006"]
    resumed = run(train_cmd(tiny_model, data, out))
    assert resumed.returncode == 0, resumed.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["cost"]["resumed_from_batch"] == 6
    assert adapter_sha(out) == expected
    assert not checkpoint_root(out).exists()


def test_a_foreign_checkpoint_is_not_resumed(tiny_model, reference, tmp_path):
    data, _ = reference
    out = tmp_path / "patch"
    assert run(train_cmd(tiny_model, data, out), fault="4").returncode != 0
    other = train_cmd(tiny_model, data, out) + ["--set", "lr=0.02"]
    refused = run(other)
    assert refused.returncode == 2 and "belongs to a different run" in refused.stderr
    assert run(other + ["--overwrite"]).returncode == 0


def test_interrupted_model_conversion_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHOPATCH_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded, "verified_file", lambda *a: tmp_path / "fake.gguf")

    def interrupted(gguf, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embedded.embedded_model_dir()
    models = tmp_path / "models"
    assert list(models.iterdir()) == []

    def complete(gguf, out):
        (out / "model.safetensors").write_bytes(b"whole")
        (out / embedded.MARKER).write_text("{}")

    monkeypatch.setattr(embedded, "_convert", complete)
    final = embedded.embedded_model_dir()
    assert (final / embedded.MARKER).is_file() and [p.name for p in models.iterdir()] == [final.name]


def test_sigterm_is_turned_into_a_clean_interrupt():
    from orthopatch import cli

    with pytest.raises(KeyboardInterrupt):
        cli._raise_interrupt(signal.SIGTERM, None)
