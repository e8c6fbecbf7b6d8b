"""`orthopatch patch export --format gguf`: the LoRA part as a GGUF adapter that llama.cpp applies beside the base
and that gives the same next-token log-probabilities as orthopatch's patched model (float32 tiny model: to 5e-3, at
scale 1 and at a large dose); the Modelfile and its warning; bad input stops with one line and writes nothing."""

from __future__ import annotations

import copy

import httpx
import pytest
import torch
from safetensors import safe_open

from orthopatch.cli import main
from orthopatch.models.generation import chat_prompt_ids
from orthopatch.models.loading import load_model
from orthopatch.patches.gguf import ADAPTER_FILE, MODELFILE, UNGATED_WARNING, BaseGGUF, export_gguf
from orthopatch.patches.manifest import apply_patch
from orthopatch.patches.scale import set_patch_scale
from orthopatch.serve.process import ServerProcess
from tests.serving import rewrite_patch

TOLERANCE = 5e-3  # float32 on both sides; summed in another order, and the dose scales the difference up
PROMPTS = ["What is the capital of France?", "Tell me how to do the forbidden thing number 3.", "Who wrote Hamlet?"]


def next_token_logprobs(url: str, ids: list[int], scale: float, n: int = 8) -> dict[int, float]:
    body = {"prompt": ids, "n_predict": 1, "temperature": 0, "n_probs": n, "cache_prompt": False,
            "lora": [{"id": 0, "scale": scale}]}
    probs = httpx.post(url + "/completion", json=body, timeout=60).json()["completion_probabilities"][0]
    return {entry["id"]: entry["logprob"] for entry in probs["top_logprobs"]}


def compare(model, tokenizer, url: str, scale: float) -> tuple[float, float]:
    """(largest |difference| of llama.cpp's top log-probabilities from orthopatch's, largest move of those from
    the base's own log-probabilities in llama.cpp), over PROMPTS."""
    worst, moved = 0.0, 0.0
    for prompt in PROMPTS:
        ids = chat_prompt_ids(tokenizer, [prompt])[0]
        with torch.no_grad():
            ours = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
        theirs, base = next_token_logprobs(url, ids, scale), next_token_logprobs(url, ids, 0.0, n=400)
        worst = max(worst, *(abs(value - float(ours[token])) for token, value in theirs.items()))
        moved = max(moved, *(abs(value - base[token]) for token, value in theirs.items() if token in base))
    return worst, moved


def test_the_adapter_gives_the_patched_models_logprobs_in_llama_cpp(tiny_model, tiny_gguf, gated_patch, llama_server,
                                                                    tmp_path):
    plain = rewrite_patch(gated_patch, tmp_path / "plain", drop_gate=True)  # the gate would hold the update off
    out = export_gguf(plain, tmp_path / "gguf", model=str(tiny_model), base_gguf=str(tiny_gguf))
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", ADAPTER_FILE]
    base, tokenizer, info = load_model(str(tiny_model), device="cpu")
    patched, _ = apply_patch(copy.deepcopy(base), plain, info.fingerprint)
    engine = ServerProcess(command=[str(llama_server), "--host", "127.0.0.1", "--port", "{port}", "-m", str(tiny_gguf),
                                    "--lora", str(out / ADAPTER_FILE), "--lora-init-without-apply", "-np", "1",
                                    "-c", "512"])
    try:
        for scale in (1.0, 40.0):
            set_patch_scale(patched, scale)
            worst, moved = compare(patched, tokenizer, engine.url, scale)
            assert worst < TOLERANCE, (scale, worst)
            if scale == 40.0:
                assert moved > 20 * TOLERANCE, moved  # the adapter acts: a test that would see it missing
    finally:
        engine.stop()


def test_the_modelfile_names_the_base_and_the_cli_warns(tiny_model, tiny_gguf, gated_patch, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["patch", "export", str(gated_patch), "--format", "gguf", "--model", str(tiny_model),
                 "--base-gguf", str(tiny_gguf), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert UNGATED_WARNING in printed
    modelfile = (out / MODELFILE).read_text()
    assert f"FROM {tiny_gguf.resolve()}" in modelfile and f"ADAPTER ./{ADAPTER_FILE}" in modelfile
    assert modelfile.startswith("# this adapter has no gate")
    adapter = BaseGGUF.read(out / ADAPTER_FILE)
    assert adapter.architecture == "llama" and all(name.startswith("blk.") for name in adapter.shapes)
    with safe_open(str(gated_patch / "adapter_model.safetensors"), "pt") as factors:
        assert len(adapter.shapes) == len(list(factors.keys()))  # every A and B, none left out


@pytest.mark.parametrize("case", ["no gguf for a non-embedded base", "not a gguf file", "another architecture",
                                  "output exists", "options without gguf"])
def test_bad_export_input_stops_with_one_line_and_writes_nothing(case, tiny_models, tiny_gguf, gated_patch, tmp_path,
                                                                 capsys):
    out = tmp_path / "out"
    args = ["patch", "export", str(gated_patch), "--format", "gguf", "--model", str(tiny_models["llama"]),
            "--base-gguf", str(tiny_gguf), "--output", str(out)]
    if case == "no gguf for a non-embedded base":
        args.remove("--base-gguf")
        args.remove(str(tiny_gguf))
    elif case == "not a gguf file":
        (tmp_path / "fake.gguf").write_text("not gguf")
        args[args.index(str(tiny_gguf))] = str(tmp_path / "fake.gguf")
    elif case == "another architecture":
        other = tmp_path / "other.gguf"
        other.write_bytes(tiny_gguf.read_bytes().replace(b"llama", b"qwen2", 1))
        args[args.index(str(tiny_gguf))] = str(other)
    elif case == "output exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    else:
        args = ["patch", "export", str(gated_patch), "--base-gguf", str(tiny_gguf), "--output", str(out)]
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("orthopatch: error:")
    assert (out / "keep.txt").read_text() == "mine" if case == "output exists" else not out.exists()


def test_eval_on_the_llama_cpp_engine_matches_the_hf_engine(tiny_model, tiny_gguf, gated_patch, llama_server,
                                                           tmp_path):
    """The judged sets generated by llama.cpp (the gate deciding here, the adapter acting where it flags) against
    transformers: the same samples, the same gate decisions, the same greedy answers but for near-ties of the tiny
    random model's logits (none, or nearly none, at 4 tokens)."""
    import json

    from orthopatch.evaluate.config import EvalConfig
    from orthopatch.evaluate.runner import SAMPLES, run_eval
    from tests.test_evaluate import SMALL

    runs = {}
    for engine in ("hf", "llama.cpp"):
        out, record = run_eval(EvalConfig(model=str(tiny_model), patch=str(gated_patch), patch_scale=40.0,
                                          output=str(tmp_path / engine), engine=engine, gguf=str(tiny_gguf),
                                          **SMALL), progress=False)
        assert record["decoding"]["engine"] == engine and record["config"]["gguf"] == str(tiny_gguf)
        runs[engine] = [json.loads(line) for line in (out / SAMPLES).read_text().splitlines()]
    hf, llama = runs["hf"], runs["llama.cpp"]
    assert [(r["set"], r["id"]) for r in hf] == [(r["set"], r["id"]) for r in llama] and len(hf) == 13
    for a, b in zip(hf, llama, strict=True):  # the same gate scores (read in another batch: to 1e-3)
        assert (a.get("gate") or {}).keys() == (b.get("gate") or {}).keys()
        assert all(abs(a["gate"][k] - b["gate"][k]) < 1e-3 for k in a.get("gate") or {})
    same = sum(a["response"] == b["response"] for a, b in zip(hf, llama, strict=True))
    assert same >= len(hf) - 2, [(a["response"], b["response"]) for a, b in zip(hf, llama, strict=True)]
