"""Scale-out: the same training command under `accelerate launch` with two CPU processes (gloo) gives the same
patch as one process (each process takes a slice of every global batch; DDP averages the gradients)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ARGS = ["--quiet", "--set", "epochs=2", "--set", "batch_size=4", "--set", "lr=0.005", "--set", "lora.r=4",
        "--set", "lora.dropout=0.0", "--set", "checkpoint_every=0"]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with the gloo backend is not available in this torch build")
def test_two_processes_make_the_same_patch_as_one(tiny_model, refusal_jsonl, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    exe = Path(sys.executable).parent
    train = ["-m", "orthopatch.cli", "train", "--model", str(tiny_model), "--data", str(refusal_jsonl), *ARGS]
    subprocess.run([sys.executable, *train, "--output", str(tmp_path / "one")], check=True, env=env,
                   capture_output=True, timeout=600)
    launched = subprocess.run([str(exe / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *train,
                               "--output", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                              timeout=600)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert launched.stdout.count("patch written to") == 1
    one = load_file(tmp_path / "one" / "adapter_model.safetensors")
    two = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert set(one) == set(two)
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    assert max(one[k].abs().max().item() for k in one if "lora_B" in k) > 1e-3  # it did train
    cost_one = json.loads((tmp_path / "one" / "orthopatch.json").read_text())["cost"]
    cost_two = json.loads((tmp_path / "two" / "orthopatch.json").read_text())["cost"]
    assert cost_two["processes"] == 2 and cost_one["processes"] == 1
    assert cost_two["tokens_trained"] == cost_one["tokens_trained"]
    assert cost_two["optimizer_steps"] == cost_one["optimizer_steps"]
