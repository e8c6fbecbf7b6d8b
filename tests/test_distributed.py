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

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
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
    launched = subprocess.run([str(exe / "accelerate"), "launch", "--config_file", str(CONFIGS / "ddp_cpu_2proc.yaml"),
                               *train, "--output", str(tmp_path / "two")], env=env, capture_output=True, text=True,
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


@pytest.mark.parametrize(("name", "kind", "processes"), [("ddp_cpu_2proc", "MULTI_GPU", 2),
                                                         ("deepspeed_zero2", "DEEPSPEED", 8), ("fsdp", "FSDP", 8)])
def test_shipped_accelerate_configs_parse(name, kind, processes):
    """A dry run of the example configs where no GPU is available: accelerate's own loader reads them."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.name == kind and config.num_processes == processes
    if kind == "FSDP":
        import inspect

        from accelerate.utils import FullyShardedDataParallelPlugin

        accepted = set(inspect.signature(FullyShardedDataParallelPlugin).parameters)
        renamed = {"offload_params": "cpu_offload"}  # the launcher maps this key to the plugin's argument
        keys = {renamed.get(k.removeprefix("fsdp_"), k.removeprefix("fsdp_")) for k in config.fsdp_config}
        assert keys <= accepted, keys - accepted


def test_vllm_engine_is_a_clear_error_without_vllm(tiny_model, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here; the equivalence test below covers it")
    from orthopatch.cli import main

    code = main(["eval", "--model", str(tiny_model), "--output", str(tmp_path / "e"), "--quiet", "--set",
                 "engine=vllm", "--set", "attacks=[]", "--set", "n_harmful=2", "--set", "device=cpu"])
    assert code == 2 and "needs vLLM" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_vllm_and_transformers_give_the_same_greedy_answers(tiny_model):
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (it needs a supported GPU); evaluation uses the transformers engine")
    from orthopatch.evaluate.vllm_engine import VLLMEngine
    from orthopatch.models.generation import generate
    from orthopatch.models.loading import load_model

    model, tokenizer, info = load_model(str(tiny_model))
    prompts = ["What is the capital of France?", "Name three primary colors.", "Who wrote Hamlet?"]
    engine = VLLMEngine(info.path, tokenizer)
    assert engine.generate(prompts, 8) == generate(model, tokenizer, prompts, max_new_tokens=8)
