"""The evaluation suite: attack families, judges (string, embedding, model slots), rejudge, lm-eval bridge, metrics.

Harmful text is never asserted on or printed: checks use counts, ids and hashes.
"""

import json
import shutil

import pytest
import torch

from orthopatch.cli import main
from orthopatch.data.registry import load_dataset
from orthopatch.data.schema import Record
from orthopatch.data.splits import get_split
from orthopatch.errors import UserError
from orthopatch.evaluate.attacks import ATTACKS, get_family, load_family_file
from orthopatch.evaluate.config import EvalConfig
from orthopatch.evaluate.judge_validation import agreement, validate_judges
from orthopatch.evaluate.judges import STRING_JUDGES, check_judge_name
from orthopatch.evaluate.judging import get_judge
from orthopatch.evaluate.metrics import fact_pair_accuracy, numeric_answer_matches, response_drift
from orthopatch.evaluate.rejudge import rejudge
from orthopatch.evaluate.runner import RESULTS, SAMPLES, run_eval
from orthopatch.io import sha256_text
from orthopatch.models.loading import load_model
from orthopatch.train.config import LoraSettings, TrainConfig
from orthopatch.train.run import train_patch

# Every judged set small; general metrics that need generation off unless a test turns them on.
TINY = dict(n_harmful=3, n_attack=2, n_sensitive=2, n_benign=2, n_trivia=2, n_gsm8k=2, n_fact_pairs=3,
            n_perplexity=2, n_kl=2, max_new_tokens=3, trivia_max_new_tokens=3, gsm8k_max_new_tokens=3,
            batch_size=4, device="cpu")


def goals(n=3):
    return [Record(f"goal:{i}", f"placeholder request {i}") for i in range(n)]


# --- attack families ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_registered_family_builds_versioned_prompts(name):
    family = ATTACKS[name]
    records = family.build(goals(), "test", 0, 3)
    assert family.version and family.describe()["name"] == name
    # counts and booleans only: a failure message must not show harmful prompts
    n, families_ok = len(records), all(r.meta["family"] == name for r in records)
    assert n == 3 and families_ok
    if family.replaces_goals:  # past tense brings its own reformulated requests
        assert all(r.id.startswith("past_tense:") for r in records)
    else:
        assert [r.meta["goal"] for r in records] == ["goal:0", "goal:1", "goal:2"]
        assert all(f"placeholder request {i}" in r.prompt for i, r in enumerate(records))


def test_pyrit_families_use_their_own_test_split_templates_only():
    test = get_split(load_dataset("pyrit_jailbreak_templates"), "test")
    for name in ("pyrit_top_level", "pyrit_in_the_wild", "pyrit_pliny", "pyrit_arth_singh"):
        allowed = {t.id for t in test if t.meta["family"] == ATTACKS[name].subset}
        used = {r.meta["template"] for r in ATTACKS[name].build(goals(20), "test", 0, None)}
        assert used and used <= allowed


def test_rephrasing_families_use_their_kind_s_test_split_template_only():
    test = {t.id for t in get_split(load_dataset("rephrasings"), "test")}
    for name in ("rephrased_future_tense", "rephrased_nested_fiction"):
        used = {r.meta["template"] for r in ATTACKS[name].build(goals(4), "test", 0, None)}
        assert len(used) == 1 and used <= test and name.removeprefix("rephrased_") in next(iter(used))


def test_user_families_from_yaml_and_jsonl(tmp_path):
    yaml_file = tmp_path / "roleplay.yaml"
    yaml_file.write_text("name: roleplay\nversion: '2'\ntemplates:\n  - 'Pretend you are a pirate. {{ prompt }}'\n"
                         "  - template: '{{ prompt }} Answer as a poem.'\n")
    family = get_family(str(yaml_file))
    assert family.name == "roleplay" and family.version == "2" and family.describe()["file_sha256"]
    records = family.build(goals(3), "test", 0, None)
    assert [r.prompt for r in records] == ["Pretend you are a pirate. placeholder request 0",
                                           "placeholder request 1 Answer as a poem.",
                                           "Pretend you are a pirate. placeholder request 2"]
    jsonl_file = tmp_path / "suffixes.jsonl"
    jsonl_file.write_text('{"template": "{{ prompt }} !!"}\n')
    assert load_family_file(jsonl_file).build(goals(1), "test", 0, None)[0].prompt == "placeholder request 0 !!"


def test_unknown_family_is_an_error():
    with pytest.raises(UserError, match="unknown attack family"):
        get_family("no_such_family")


# --- judges ------------------------------------------------------------------------------------------------------

def test_judge_names_and_match_modes():
    for name in [*STRING_JUDGES, "embed-minilm", "strmatch-jbb:prefix", "hf-guard:/some/dir"]:
        check_judge_name(name)
    for bad in ["gpt-judge", "strmatch-jbb:regex", "hf-guard:", "embed-minilm:x"]:
        with pytest.raises(UserError, match="unknown judge"):
            check_judge_name(bad)
    substring, prefix = get_judge("strmatch-jbb"), get_judge("strmatch-jbb:prefix")
    text = "Well. I'm sorry, no."
    assert substring.verdicts([text]) == [True] and prefix.verdicts([text]) == [False]
    assert prefix.describe()["mode"] == "prefix" and prefix.name == "strmatch-jbb:prefix"


def test_embedding_judge_is_fitted_on_train_rows_and_separates_clear_cases():
    judge = get_judge("embed-minilm")
    info = judge.describe()["fitted_on"]
    assert info["split"] == "train" and info["n"] == len(get_split(load_dataset("refusal_labels"), "train"))
    verdicts = judge.verdicts(["I'm sorry, but I can't help with that request.",
                               "Sure! Here is a short poem about the ocean: waves roll in and out."])
    assert verdicts == [True, False]


def test_validation_reports_every_judge_on_the_held_out_rows():
    report = validate_judges(["strmatch-refusal", "embed-minilm"])
    n = len(get_split(load_dataset("refusal_labels"), "test"))
    assert report["data"]["split"] == "test" and report["data"]["n_used"] == n
    for entry in report["judges"].values():
        assert entry["accuracy"]["n"] == n and 0 <= entry["f1"] <= 1
        assert sum(entry["confusion"].values()) == n
    assert agreement([True, False, True], [True, True, False])["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 0}


@pytest.fixture(scope="module")
def tiny_judges(tmp_path_factory):
    """A tiny random sequence classifier and a tiny random causal 'guard' (wiring only: their verdicts are noise)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tests.conftest import build_tokenizer, save_tiny

    root = tmp_path_factory.mktemp("judges")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=2, pad_token_id=2,
                         id2label={0: "COMPLIES", 1: "REFUSAL"}, label2id={"COMPLIES": 0, "REFUSAL": 1})
    LlamaForSequenceClassification(config).save_pretrained(root / "classifier", safe_serialization=True)
    tokenizer.save_pretrained(root / "classifier")
    return {"classifier": root / "classifier", "guard": save_tiny(root / "guard", "llama", seed=3)}


def test_model_judge_slots_load_and_record_themselves(tiny_judges):
    classifier = get_judge(f"hf-classifier:{tiny_judges['classifier']}")
    guard = get_judge(f"hf-guard:{tiny_judges['guard']}")
    assert classifier.kind == "refusal" and classifier.refusal_class == 1
    assert guard.kind == "harm" and guard.needs_prompt
    texts = ["I'm sorry, I can't.", "Sure, here you go.", "Maybe."]
    assert all(isinstance(v, bool) for v in classifier.verdicts(texts))
    assert all(isinstance(v, bool) for v in guard.verdicts(texts, ["a", "b", "c"]))
    assert guard.verdicts(texts, ["a", "b", "c"]) == guard.verdicts(texts, ["a", "b", "c"])  # deterministic
    for judge in (classifier, guard):
        assert len(judge.describe()["fingerprint"]) == 64
    with pytest.raises(UserError, match="needs the prompts"):
        guard.verdicts(texts)


def test_model_judge_refuses_pickle_only_weights(tiny_judges, tmp_path):
    target = tmp_path / "pickled"
    shutil.copytree(tiny_judges["classifier"], target)
    (target / "model.safetensors").rename(target / "pytorch_model.bin")
    with pytest.raises(UserError, match="safetensors only"):
        get_judge(f"hf-classifier:{target}")


# --- runs, rejudge -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tiny_model, tiny_judges, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    cfg = EvalConfig(model=str(tiny_model), output=str(root / "base"), attacks=["gcg", "prefix_injection",
                                                                                 "pyrit_top_level"],
                     extra_judges=["strmatch-jbb", f"hf-guard:{tiny_judges['guard']}"], gsm8k=None, trivia=None,
                     perplexity=None, kl=[], **{k: v for k, v in TINY.items()})
    return run_eval(cfg, progress=False)


def test_run_reports_families_sensitive_sets_and_judge_disagreement(tiny_run, tiny_judges):
    out, record = tiny_run
    m = record["metrics"]
    assert set(m["jailbreak_asr"]) == {"gcg", "prefix_injection", "pyrit_top_level"}
    assert m["jailbreak_asr"]["gcg"]["n"] == 2 and m["jailbreak_asr"]["prefix_injection"]["n"] == 2
    # the tiny model has 512 positions: the long PyRIT templates are skipped and counted, never truncated
    skipped = record["data"]["attack:pyrit_top_level"]["skipped_too_long"]
    assert skipped == 2 and m["jailbreak_asr"]["pyrit_top_level"] == {"value": None, "ci95": [None, None], "n": 0,
                                                                      "count": 0}
    assert m["jailbreak_asr_mean"]["n_families"] == 2
    assert set(m["sensitive_refusal"]) == {"donotanswer:human_chatbox", "donotanswer:misinformation_harms"}
    guard = f"hf-guard:{tiny_judges['guard']}"
    assert set(m["judges"]) == {"strmatch-jbb", guard}
    assert "rho_overrefusal" not in m["judges"][guard]["sets"]  # a harm judge scores harmful sets only
    assert "rho_overrefusal" in m["judges"]["strmatch-jbb"]["sets"]
    assert m["fact_pair_accuracy"]["n"] == 3
    rows = [json.loads(line) for line in (out / SAMPLES).read_text().splitlines()]
    attack_rows = [r for r in rows if r["group"] == "attack"]
    assert attack_rows and all("prompt" not in r and "family" in r for r in attack_rows)
    assert {r["set"] for r in rows if "prompt" in r} == {"rho_overrefusal", "wsr_benign"}


def test_rejudge_reproduces_with_the_same_judge_and_changes_with_another(tiny_run, tmp_path):
    out, record = tiny_run
    same_dir, same = rejudge(out, "strmatch-refusal", output=tmp_path / "same")
    assert same["metrics"] == json.loads(json.dumps(record["metrics"]))
    assert (same_dir / SAMPLES).read_text() == (out / SAMPLES).read_text()
    # Answers that only one judge calls a refusal: put them in a copy of the run, then judge it both ways.
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    rows = [json.loads(line) for line in (edited / SAMPLES).read_text().splitlines()]
    for row in rows:
        if row["group"] == "harmful":
            row["response"] = "I won't do that."
    (edited / SAMPLES).write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, ours = rejudge(edited, "strmatch-refusal", [], output=tmp_path / "a")
    _, jbb = rejudge(edited, "strmatch-jbb", [], output=tmp_path / "b")
    assert ours["metrics"]["harmful_refusal"]["harmbench"]["value"] == 1.0
    assert jbb["metrics"]["harmful_refusal"]["harmbench"]["value"] == 0.0
    assert jbb["judge"]["name"] == "strmatch-jbb" and jbb["rejudged_from"]["judge"]["name"] == "strmatch-refusal"


def test_rejudge_rebuilds_prompts_for_a_guard_and_checks_their_hashes(tiny_run, tiny_judges, tmp_path):
    out, record = tiny_run
    guard = f"hf-guard:{tiny_judges['guard']}"
    _, again = rejudge(out, "strmatch-refusal", [guard], output=tmp_path / "g")
    assert again["metrics"]["judges"][guard] == json.loads(json.dumps(record["metrics"]["judges"][guard]))
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    rows = [json.loads(line) for line in (tampered / SAMPLES).read_text().splitlines()]
    rows[0]["prompt_sha256"] = sha256_text("something else")
    (tampered / SAMPLES).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match="no longer matches"):
        rejudge(tampered, "strmatch-refusal", [guard], output=tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_a_harm_judge_cannot_be_the_primary_judge(tiny_model, tiny_judges, tmp_path):
    cfg = EvalConfig(model=str(tiny_model), output=str(tmp_path / "x"), judge=f"hf-guard:{tiny_judges['guard']}",
                     attacks=[], **TINY)
    with pytest.raises(UserError, match="primary judge must be a refusal judge"):
        run_eval(cfg, progress=False)
    assert not (tmp_path / "x").exists()


def test_drift_and_kl_with_a_patch(tiny_model, refusal_jsonl, tmp_path):
    patch = train_patch(TrainConfig(model=str(tiny_model), data=[str(refusal_jsonl)], output=str(tmp_path / "p"),
                                    epochs=1, batch_size=4, lr=5e-3, device="cpu", lora=LoraSettings(r=2, alpha=4)),
                        progress=False)
    cfg = EvalConfig(model=str(tiny_model), patch=str(patch), output=str(tmp_path / "e"), attacks=[], sensitive=[],
                     harmful=[], trivia=None, perplexity=None, fact_pairs=None, **TINY)
    _, record = run_eval(cfg, progress=False)
    drift = record["metrics"]["response_drift"]
    assert drift["n"] == 4 and -1 <= drift["mean_similarity"] <= 1 + 1e-6
    assert record["metrics"]["gsm8k_accuracy"]["n"] == 2


# --- general metrics ---------------------------------------------------------------------------------------------

def test_numeric_answer_matching():
    assert numeric_answer_matches("So the total is $2,280.", "2280")
    assert numeric_answer_matches("x = 3.50", "3.5")
    assert not numeric_answer_matches("It is 2280 or 2281", "2280")  # the last number counts
    assert not numeric_answer_matches("no idea", "7")


def test_fact_pairs_prefer_the_likelier_statement(tiny_model):
    model, tokenizer, _ = load_model(str(tiny_model), device="cpu")
    seen = "The quick brown fox jumps over the lazy dog."  # in the tiny tokenizer's corpus: short, likely
    unseen = "Zqxj vkwp mmrt yyyb qqqz."
    assert fact_pair_accuracy(model, tokenizer, [(seen, unseen)])["n"] == 1
    flipped = fact_pair_accuracy(model, tokenizer, [(unseen, seen)])["value"]
    assert fact_pair_accuracy(model, tokenizer, [(seen, unseen)])["value"] == 1 - flipped


def test_response_drift_of_identical_answers():
    drift = response_drift(["Paris is the capital.", "Red, blue, yellow."], ["Paris is the capital.", "Green."])
    assert drift["identical"]["value"] == 0.5 and 0 < drift["mean_similarity"] < 1


# --- lm-eval bridge ----------------------------------------------------------------------------------------------

def test_lm_eval_bridge_runs_builtin_and_user_tasks(tiny_model, tmp_path):
    pytest.importorskip("lm_eval")
    include = tmp_path / "tasks"
    include.mkdir()
    data = tmp_path / "colors.jsonl"
    data.write_text("".join(json.dumps({"q": f"Question {i}: which is a color?", "a": "red", "b": "table"}) + "\n"
                            for i in range(4)))
    (include / "colors.yaml").write_text(
        "task: my_colors\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(data) + "\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{[a, b]}}'\n"
        "doc_to_target: 0\nmetric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n")
    cfg = EvalConfig(model=str(tiny_model), output=str(tmp_path / "e"), harmful=[], attacks=[], sensitive=[],
                     benign=[], trivia=None, gsm8k=None, perplexity=None, kl=[], fact_pairs=None,
                     lm_eval=["orthopatch_fact_pairs", "my_colors"], lm_eval_include=str(include), lm_eval_limit=4,
                     **{k: v for k, v in TINY.items()})
    _, record = run_eval(cfg, progress=False)
    results = record["metrics"]["lm_eval"]
    assert 0 <= results["orthopatch_fact_pairs"]["acc,none"] <= 1 and 0 <= results["my_colors"]["acc,none"] <= 1
    assert record["data"]["lm_eval"]["n_samples"] == {"orthopatch_fact_pairs": 4, "my_colors": 4}
    assert record["data"]["lm_eval"]["builtin"]["orthopatch_fact_pairs"]["split"] == "test"
    with pytest.raises(UserError, match="unknown lm-eval task"):
        run_eval(EvalConfig(**{**vars(cfg), "output": str(tmp_path / "f"), "lm_eval": ["no_such_task"]}),
                 progress=False)


# --- command line ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("flags", "says"), [(["--judge", "nope"], "unknown judge"),
                                             (["--attacks", "nope"], "unknown attack family"),
                                             (["--extra-judges", "strmatch-jbb:regex"], "unknown judge")])
def test_eval_flags_fail_cleanly(tiny_model, tmp_path, capsys, flags, says):
    code = main(["eval", "--model", str(tiny_model), "--output", str(tmp_path / "o"), "--quiet", *flags])
    err = capsys.readouterr().err
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_judges_and_rejudge_commands(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    assert main(["judges"]) == 0 and "embed-minilm" in capsys.readouterr().out
    assert main(["judges", "--validate", "--judges", "strmatch-jbb", "--output", str(tmp_path / "v.json")]) == 0
    assert "strmatch-jbb" in capsys.readouterr().out
    assert json.loads((tmp_path / "v.json").read_text())["judges"]["strmatch-jbb"]["accuracy"]["n"] > 0
    assert main(["rejudge", str(out), "--judge", "strmatch-gcg", "--extra-judges", "--output",
                 str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / RESULTS).read_text())["judge"]["name"] == "strmatch-gcg"
    assert main(["rejudge", str(tmp_path / "nope"), "--judge", "strmatch-gcg"]) == 2
