"""Crash safety and determinism: a killed training run resumes to the same patch; nothing half-written remains."""

import json
import signal

import pytest

from orthopatch.models import embedded
from orthopatch.patches.manifest import MANIFEST
from orthopatch.train.checkpoint import checkpoint_root
from tests import training_runs
from tests.training_runs import adapter_sha, reference_run, train_cmd

DROPOUT = ("--set", "lora.dropout=0.1")  # resuming must restore the dropout RNG too


def run(cmd, fault=None):
    return training_runs.run(cmd, fault, "ORTHOPATCH_FAULT_AFTER_STEPS")  # the older spelling keeps working


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    return reference_run(tiny_model, tmp_path_factory.mktemp("reference"), *DROPOUT)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_interrupted_training_resumes_to_the_same_patch(tiny_model, reference, tmp_path, how):
    data, expected = reference
    out = tmp_path / "patch"
    killed = run(train_cmd(tiny_model, data, out, *DROPOUT), fault=f"7:{how}")
    assert killed.returncode != 0
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".patch.tmp")]
    assert [p.name for p in checkpoint_root(out).iterdir()] == ["step-000006"]
    resumed = run(train_cmd(tiny_model, data, out, *DROPOUT))
    assert resumed.returncode == 0, resumed.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["cost"]["resumed_from_batch"] == 6
    assert adapter_sha(out) == expected
    assert not checkpoint_root(out).exists()


def test_a_foreign_checkpoint_is_not_resumed(tiny_model, reference, tmp_path):
    data, _ = reference
    out = tmp_path / "patch"
    assert run(train_cmd(tiny_model, data, out, *DROPOUT), fault="4").returncode != 0
    other = train_cmd(tiny_model, data, out, *DROPOUT) + ["--set", "lr=0.02"]
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
