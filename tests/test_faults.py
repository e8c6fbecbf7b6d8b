"""A run killed in any phase (after data preparation, mid-training, while saving the patch, while writing an
evaluation's results, inside a sweep cell) leaves no partial output anywhere, and its rerun resumes or restarts to the
same result. A full disk while saving leaves no partial patch and one clear error line; a damaged or foreign
checkpoint is refused with a clear message, never half-loaded."""

import json
import sys

import pytest

from orthopatch.patches.manifest import MANIFEST
from orthopatch.train.checkpoint import FORMAT, STATE, TENSORS, checkpoint_root, latest
from tests.training_runs import adapter_sha, cli, reference_run, run, train_cmd


def leftovers(directory) -> list[str]:
    """Hidden temporaries and locks (checkpoints are meant to stay until their run finishes)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and ".checkpoint" not in p.name)


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    return reference_run(tiny_model, tmp_path_factory.mktemp("faults"))


@pytest.mark.parametrize("fault", ["data:1:SIGKILL", "step:4:SIGKILL", "save:1:SIGKILL", "save:1:SIGINT"])
def test_a_training_run_killed_in_any_phase_reruns_to_the_same_patch(tiny_model, reference, tmp_path, fault):
    data, expected = reference
    out = tmp_path / "patch"
    killed = run(train_cmd(tiny_model, data, out), fault)
    assert killed.returncode != 0
    assert not out.exists()
    rerun = run(train_cmd(tiny_model, data, out))
    assert rerun.returncode == 0, rerun.stderr
    assert adapter_sha(out) == expected
    assert leftovers(tmp_path) == [] and not checkpoint_root(out).exists()


def test_a_full_disk_while_saving_leaves_no_partial_patch_and_one_error_line(tiny_model, reference, tmp_path):
    data, expected = reference
    out = tmp_path / "patch"
    full = run(train_cmd(tiny_model, data, out), "save:1:ENOSPC")
    assert full.returncode == 1
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left on device" in lines[0] and "Traceback" not in full.stderr
    assert not out.exists() and leftovers(tmp_path) == []
    rerun = run(train_cmd(tiny_model, data, out))
    assert rerun.returncode == 0 and adapter_sha(out) == expected


@pytest.mark.parametrize("damage", ["truncate-tensors", "corrupt-state", "old-format"])
def test_a_damaged_or_old_checkpoint_is_refused_never_half_loaded(tiny_model, reference, tmp_path, damage):
    data, expected = reference
    out = tmp_path / "patch"
    assert run(train_cmd(tiny_model, data, out), "step:4").returncode != 0
    step = latest(checkpoint_root(out))
    if damage == "truncate-tensors":
        raw = (step / TENSORS).read_bytes()
        (step / TENSORS).write_bytes(raw[: len(raw) // 2])
    elif damage == "corrupt-state":
        (step / STATE).write_text('{"format": "' + FORMAT + '", "key": ')
    else:
        state = json.loads((step / STATE).read_text())
        state.pop("format")
        (step / STATE).write_text(json.dumps(state))
    refused = run(train_cmd(tiny_model, data, out))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert ("damaged or truncated" if damage != "old-format" else "another orthopatch version") in refused.stderr
    assert not out.exists()
    restarted = run(train_cmd(tiny_model, data, out, "--overwrite"))
    assert restarted.returncode == 0 and adapter_sha(out) == expected


def test_an_evaluation_killed_while_writing_its_results_leaves_nothing(tiny_model, tmp_path):
    out = tmp_path / "eval"
    cmd = cli("eval", "--model", str(tiny_model), "--output", str(out), "--attacks", "none", "--set", "device=cpu",
              "--set", "n_harmful=2", "--set", "n_benign=2", "--set", "sensitive=[]", "--set", "trivia=null",
              "--set", "gsm8k=null", "--set", "fact_pairs=null", "--set", "perplexity=null", "--set", "kl=[]",
              "--set", "max_new_tokens=2")
    assert run(cmd, "eval-write:1:SIGKILL").returncode != 0
    assert not out.exists()
    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "results.json").is_file() and leftovers(tmp_path) == []


def test_a_sweep_killed_inside_a_cell_resumes_without_retraining(tiny_model, refusal_jsonl, tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "orthopatch.cli", "sweep", "--preset", "none", "--model", str(tiny_model),
           "--output", str(out), "--set", f"data=[{refusal_jsonl}]", "--set", "ranks=[2]", "--set", "lrs=[0.005]",
           "--set", "epochs=[1]", "--set", "max_examples=4", "--set", "n_harmful=2", "--set", "attacks=[]",
           "--set", "n_benign=2", "--set", "n_trivia=2", "--set", "n_perplexity=2", "--set", "max_new_tokens=2",
           "--set", "device=cpu"]
    assert run(cmd, "cell:1:SIGKILL").returncode != 0
    cell = next((out / "cells").iterdir())
    patch = cell / "patch"
    assert (patch / MANIFEST).is_file() and not (cell / "cell.json").exists()
    trained_at = (patch / MANIFEST).stat().st_mtime_ns
    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.stderr
    assert (patch / MANIFEST).stat().st_mtime_ns == trained_at  # the finished training was not redone
    assert (cell / "cell.json").is_file() and (out / "sweep.json").is_file()
