"""Every case of tests/corpus/bad_inputs: exit code 2, one line naming file/line/field, nothing written."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from orthopatch.cli import main
from orthopatch.train.config import LoraSettings, TrainConfig
from orthopatch.train.run import train_patch

CORPUS = Path(__file__).parent / "corpus" / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 20 and len({c["name"] for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def good_patch(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    data = root / "d.jsonl"
    data.write_text(json.dumps({"prompt": "Say hello", "response": "Hello!"}) + "\n")
    return train_patch(TrainConfig(model=str(tiny_model), data=[str(data)], output=str(root / "patch"), epochs=1,
                                   device="cpu", lora=LoraSettings(r=2, alpha=4)), progress=False)


def materialise(case, work: Path, good_patch: Path) -> Path | None:
    if case["input"] == "none":
        return None
    if case["input"] != "generated":
        target = work / case["input"]
        shutil.copyfile(CORPUS / case["input"], target)
        return target
    if case["name"] == "ten_megabyte_line":
        target = work / "huge.jsonl"
        line = json.dumps({"prompt": "x" * (10 << 20), "response": "Hello!"})
        target.write_text(json.dumps({"prompt": "Say hello", "response": "Hello!"}) + "\n" + line + "\n")
        return target
    if case["name"] == "nonexistent_model_path":
        return work / "no-such-model"
    if case["name"] == "patch_missing_file":
        target = work / "patch"
        shutil.copytree(good_patch, target)
        (target / "adapter_model.safetensors").unlink()
        return target / "adapter_model.safetensors"
    if case["name"] == "patch_scale_not_a_number":
        return Path(f"{good_patch}@abc")
    raise AssertionError(case["name"])


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if any model is loaded (range errors must come first)."""
    import sys

    from orthopatch.models import loading

    original = loading.load_model

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad value was refused")

    for module in list(sys.modules.values()):
        if module is not None and module.__name__.startswith("orthopatch") and \
                getattr(module, "load_model", None) is original:
            monkeypatch.setattr(module, "load_model", refuse)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input(case, tiny_model, good_patch, tmp_path, capsys, request):
    work = tmp_path / "work"
    work.mkdir()
    path = materialise(case, work, good_patch)
    out = tmp_path / "out"
    base = ["--output", str(out), "--quiet", "--set", "device=cpu"]
    if "set" in case or case["how"] == "patch-apply":
        request.getfixturevalue("no_model_loads")
    sets = [arg for value in case.get("set", "").split(" --set ") if value for arg in ("--set", value)]
    argv = {
        "train-set": ["train", "--model", str(tiny_model), *sets, *base],
        "eval-set": ["eval", "--model", str(tiny_model), *sets, *base],
        "patch-apply": ["patch", "apply", str(path), "--model", str(tiny_model), "--output", str(out)],
        "train-data": ["train", "--model", str(tiny_model), "--data", str(path), *base],
        "train-config": ["train", "--model", str(tiny_model), "--config", str(path), *base],
        "eval-config": ["eval", "--model", str(tiny_model), "--config", str(path), *base],
        "model": ["eval", "--model", str(path), *base],
        "patch": ["eval", "--model", str(tiny_model), "--patch", str(path.parent) if path else "", *base],
        "eval-goals": ["eval", "--model", str(tiny_model), "--set", f"attack_goals={path}", *base],
        "eval-attack": ["eval", "--model", str(tiny_model), "--attacks", str(path), *base],
    }[case["how"]]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("orthopatch: error: ")
    if path is not None:  # a --set value has no file; its field is named below
        assert str(path) in err
    if case["line"] is not None:
        assert f"{path}:{case['line']}: " in err
    if case["field"] is not None:
        assert f"field '{case['field']}'" in err
    assert case["says"] in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written anywhere
