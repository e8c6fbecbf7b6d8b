"""Every script in benchmarks/ runs in the default test run (tiny models, smallest arguments): it exits 0 and prints
the JSON keys benchmarks/README.md documents. No timing is asserted; this only keeps the scripts from rotting."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
KEYS = {
    "geometry_fast_path.py": ["modules", "source", "fast_seconds", "dense_seconds", "speedup",
                              "max_abs_disagreement", "threads"],
    "eval_throughput.py": ["model", "device", "n_prompts", "prompt_tokens", "routes", "prompts_per_s", "speedup",
                           "speedup_vs_sorted", "identical_answers", "identical_judgements"],
    "train_throughput.py": ["orthopatch_lora", "hf_trainer_lora", "orthopatch_full", "ratios", "setup"],
    "serve.py": ["model", "gguf", "patch", "max_tokens", "max_batch", "threads", "results", "ratios",
                 "llamacpp_answers", "requests_per_s", "completion_tokens_per_s", "p50_latency_s", "p95_latency_s",
                 "llamacpp_gated_vs_llama_server@1", "llamacpp_gated_vs_torch_gated@2",
                 "torch_base_vs_transformers_serve@2", "torch_base_vs_unbatched@2", "torch_gated_vs_torch_base@1"],
    "gpu.py": ["shape", "device", "device_name", "dtype", "parameters", "train", "ratios", "eval", "mfu",
               "model_tflops_per_s", "orthopatch_vs_hf_trainer_tokens_per_second", "plain_prompts_per_s",
               "orthopatch_prompts_per_s", "peak_tflops"],
    "gate_overhead.py": ["patch", "device", "threads", "runs", "max_new_tokens", "gated_seconds", "ungated_seconds",
                         "overhead", "flagged", "identical_answers"],
    "gate_features.py": ["model", "preset", "device", "threads", "prompts", "layers", "batch_size", "routes",
                         "speedup", "max_abs_difference"],
}


def test_every_benchmark_script_has_a_smoke_test():
    assert sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")) == sorted(KEYS)


def run(script: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                            text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout[result.stdout.index("{"):])


def check(script: str, output: dict) -> None:
    section = README.split(f"## {script}", 1)[1].split("\n## ", 1)[0]
    for key in KEYS[script]:
        assert key in output, key
        assert f"`{key}`" in section, f"benchmarks/README.md does not document {key} under {script}"


def test_geometry_fast_path_synthetic_and_on_a_patch(tiny_model, refusal_jsonl, tmp_path):
    from orthopatch.train.config import LoraSettings, TrainConfig
    from orthopatch.train.run import train_patch

    output = run("geometry_fast_path.py", "--layers", "1", "--r", "2", "--k", "4")
    check("geometry_fast_path.py", output)
    assert output["max_abs_disagreement"] < 1e-6
    patch = train_patch(TrainConfig(model=str(tiny_model), data=[str(refusal_jsonl)], output=str(tmp_path / "p"),
                                    epochs=1, device="cpu", lora=LoraSettings(r=2, alpha=4)), progress=False)
    on_patch = run("geometry_fast_path.py", "--patch", str(patch), "--base", str(tiny_model), "--k", "4")
    assert on_patch["modules"] > 0 and on_patch["max_abs_disagreement"] < 1e-6


def test_eval_throughput(tiny_model):
    output = run("eval_throughput.py", "--model", str(tiny_model), "--n", "4", "--batch-size", "2",
                 "--max-new-tokens", "2")
    check("eval_throughput.py", {**output, **output["routes"]["orthopatch"]})
    assert sorted(output["routes"]) == ["orthopatch", "plain", "sorted"] and output["n_prompts"] > 4


@pytest.mark.filterwarnings("ignore")
def test_train_throughput(tiny_model):
    output = run("train_throughput.py", "--model", str(tiny_model), "--examples", "4", "--epochs", "1", "--repeats", "1")
    check("train_throughput.py", output)
    assert output["orthopatch_lora"]["tokens"] > 0 and output["ratios"]["orthopatch_vs_hf_trainer_tokens_per_second"] > 0


def test_gate_overhead(tiny_model, gated_patch):
    output = run("gate_overhead.py", "--patch", str(gated_patch), "--model", str(tiny_model), "--n", "4",
                 "--batch-size", "2", "--max-new-tokens", "2", "3")
    check("gate_overhead.py", {**output, **output["runs"][0]})
    assert [r["max_new_tokens"] for r in output["runs"]] == [2, 3] and output["runs"][0]["ungated_seconds"] > 0


def test_serve(tiny_model, tiny_gguf, gated_patch, llama_server):
    output = run("serve.py", "--model", str(tiny_model), "--gguf", str(tiny_gguf), "--patch", str(gated_patch),
                 "--clients", "1,2", "--requests", "4", "--rounds", "1", "--max-tokens", "3", "--context", "256",
                 "--llama-server", str(llama_server))
    check("serve.py", {**output, **output["results"]["2"]["orthopatch_torch_base"], **output["ratios"]})
    assert set(output["results"]["2"]) == {"orthopatch_torch_base", "orthopatch_torch_gated", "orthopatch_llamacpp_base",
                                           "orthopatch_llamacpp_gated", "orthopatch_torch_unbatched",
                                           "llama_server_base", "transformers_serve_cb"}
    assert all(run["requests"] == 4 and run["requests_per_s"] > 0 for run in output["results"]["2"].values())
    assert output["llamacpp_answers"]["prompts"] == 4 and output["llamacpp_answers"]["equal"] == 4


@pytest.mark.filterwarnings("ignore")
def test_gpu_benchmark_runs_a_tiny_shape_on_the_cpu():
    output = run("gpu.py", "--shape", "tiny", "--examples", "4", "--n", "4", "--max-new-tokens", "2")
    check("gpu.py", {**output, **output["train"]["orthopatch_lora"], **output["ratios"], **output["eval"]})
    assert output["train"]["orthopatch_lora"]["tokens"] > 0 and output["eval"]["prompts"] == 4


def test_gate_features_reads_the_same_values_both_ways(tiny_model):
    output = run("gate_features.py", "--model", str(tiny_model), "--preset", "selective-fast", "--n", "24",
                 "--rounds", "1", "--batch-size", "8")
    check("gate_features.py", output)
    assert output["max_abs_difference"] < 1e-4
    assert output["routes"]["shared"]["tokens"] < output["routes"]["plain"]["tokens"]
