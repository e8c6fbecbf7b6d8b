"""Evaluation on a tiny model with small slices of the registered sets; judges and metrics on known inputs."""

import json
import math

import pytest
import torch

from orthopatch.data.registry import load_dataset
from orthopatch.errors import UserError
from orthopatch.evaluate.config import EvalConfig
from orthopatch.evaluate.judges import STRING_JUDGES
from orthopatch.evaluate.judging import get_judge
from orthopatch.evaluate.metrics import answer_matches, perplexity, wilson_interval
from orthopatch.evaluate.runner import RESULTS, SAMPLES, run_eval, safety_metrics
from orthopatch.models.generation import generate
from orthopatch.models.loading import load_model
from orthopatch.train.config import LoraSettings, TrainConfig
from orthopatch.train.run import train_patch

SMALL = dict(n_harmful=4, n_benign=3, n_trivia=3, n_perplexity=3, n_kl=2, max_new_tokens=4,
             trivia_max_new_tokens=4, batch_size=4, device="cpu", attacks=[], sensitive=[], gsm8k=None,
             fact_pairs=None)


def test_wilson_interval_reference_values():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and abs(high - 0.2775) < 1e-3
    low, high = wilson_interval(5, 10)
    assert abs(low - 0.2366) < 1e-3 and abs(high - 0.7634) < 1e-3
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


@pytest.mark.parametrize(
    ("judge", "text", "refused"),
    [("strmatch-refusal", "I'm sorry, but I can't help with that.", True),
     ("strmatch-refusal", "I CANNOT do that.", True),
     ("strmatch-refusal", "Sure! Here is a poem about the sea.", False),
     ("strmatch-refusal", "Here is a long answer. " * 10 + "I can't guarantee it.", False),
     ("strmatch-refusal", "I can\u2019t help with that.", True),
     ("strmatch-xstest", "Sorry, no.", True), ("strmatch-xstest", "Well, sorry.", False),
     ("strmatch-jbb", "As an AI, I ...", True), ("strmatch-jbb", "i'm sorry", False),
     ("strmatch-gcg", "That would be illegal.", True), ("strmatch-arditi", "i am unable to", True)],
)
def test_string_judges(judge, text, refused):
    assert get_judge(judge).is_refusal(text) is refused


def test_judges_are_versioned_and_unknown_is_an_error():
    for judge in STRING_JUDGES.values():
        assert judge.describe()["version"] and judge.describe()["name"] == judge.name
    with pytest.raises(UserError, match="unknown judge"):
        get_judge("gpt-judge")


def test_answer_matching():
    assert answer_matches("It was Richard Nixon, I think.", "Richard Nixon")
    assert answer_matches("The answer is 1963", "1963")
    assert answer_matches("the gyroscope", "A gyroscope.")
    assert not answer_matches("Kennedy", "Richard Nixon")


def test_generation_is_batch_invariant_and_ordered(tiny_model):
    model, tokenizer, _ = load_model(str(tiny_model), device="cpu")
    prompts = ["Hi", "What is the capital of France?", "Name three primary colors, please", "Who wrote Hamlet?"]
    one = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=1)
    many = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=4)
    assert one == many


def test_perplexity_of_a_uniform_model_is_the_vocab_size(tiny_model):
    model, tokenizer, _ = load_model(str(tiny_model), device="cpu")
    with torch.no_grad():
        for p in model.lm_head.parameters():
            p.zero_()
    result = perplexity(model, tokenizer, ["The quick brown fox jumps over the lazy dog."])
    assert abs(result["value"] - model.config.vocab_size) / model.config.vocab_size < 1e-3


def test_eval_writes_results_and_samples_without_harmful_text(tiny_model, refusal_jsonl, tmp_path, capsys):
    patch = train_patch(TrainConfig(model=str(tiny_model), data=[str(refusal_jsonl)], output=str(tmp_path / "p"),
                                    epochs=1, batch_size=4, lr=5e-3, device="cpu",
                                    lora=LoraSettings(r=2, alpha=4)), progress=False)
    out, record = run_eval(EvalConfig(model=str(tiny_model), output=str(tmp_path / "base"), **SMALL), progress=False)
    _, patched = run_eval(EvalConfig(model=str(tiny_model), patch=str(patch), output=str(tmp_path / "patched"),
                                     **SMALL), progress=False)
    saved = json.loads((out / RESULTS).read_text())
    assert saved["metrics"] == json.loads(json.dumps(record["metrics"]))
    metrics = saved["metrics"]
    assert metrics["harmful_refusal"]["harmbench"]["n"] == 4
    assert metrics["over_refusal"]["all"]["n"] == 6 and metrics["trivia_accuracy"]["n"] == 3
    assert metrics["perplexity"]["value"] > 1 and metrics["kl_to_base"]["value"] is None
    assert patched["metrics"]["kl_to_base"]["value"] > 0
    assert saved["judge"]["name"] == "strmatch-refusal" and saved["decoding"]["strategy"] == "greedy"
    assert saved["data"]["harmbench"]["split"] == "test" and len(saved["data"]["harmbench"]["used_sha256"]) == 64
    assert patched["patch"]["base"] == saved["model"]["fingerprint"]

    rows = [json.loads(line) for line in (out / SAMPLES).read_text().splitlines()]
    assert len(rows) == 4 + 6 + 3
    harmful_rows = [r for r in rows if r["set"] == "harmbench"]
    assert harmful_rows and all("prompt" not in r and len(r["prompt_sha256"]) == 64 for r in harmful_rows)
    sample_text = (out / SAMPLES).read_text() + (out / RESULTS).read_text()
    harmful_prompts = [r.prompt for r in load_dataset("harmbench").records]
    assert not any(p in sample_text for p in harmful_prompts)
    captured = capsys.readouterr()
    assert not any(p in captured.out + captured.err for p in harmful_prompts)


def test_eval_rejects_misfiled_sets(tiny_model, tmp_path):
    with pytest.raises(UserError, match="harmful"):
        run_eval(EvalConfig(model=str(tiny_model), output=str(tmp_path / "x"), harmful=["wsr_benign"], **SMALL),
                 progress=False)
    assert not (tmp_path / "x").exists()


def test_over_refusal_is_reported_per_category_where_the_records_have_one():
    rows = [{"set": "rho_overrefusal", "group": "benign", "id": str(i), "category": "figurative" if i < 4 else
             "history", "refused": i in (0, 1, 5)} for i in range(10)]
    rows += [{"set": "plain", "group": "benign", "id": "p", "refused": True}]
    m = safety_metrics(rows, {"rho_overrefusal": {"group": "benign"}, "plain": {"group": "benign"}})
    by_category = m["over_refusal_by_category"]
    assert set(by_category) == {"rho_overrefusal"}  # a set without categories gets none
    assert by_category["rho_overrefusal"]["figurative"]["value"] == 0.5
    assert by_category["rho_overrefusal"]["history"]["n"] == 6
    assert by_category["rho_overrefusal"]["history"]["value"] == pytest.approx(1 / 6)
