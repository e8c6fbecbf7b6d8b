"""Every registered gate kind on tiny models: each feature kind (alone and combined) with each head fits a planted
signal, and a gated patch of each kind survives train, save, verify, load and attach with the same scores; a user's
own guard model plugs into the ``hf-classifier:`` slot and is pinned by its hash; the reader that turns a prompt's
token ids back into its text gives the text the user wrote."""

import json
import shutil

import pytest
import torch

from orthopatch.cli import main
from orthopatch.config import make
from orthopatch.data.gate_data import GateData
from orthopatch.errors import UserError
from orthopatch.models.encoders import minilm_dir
from orthopatch.models.generation import chat_prompt_ids, left_pad
from orthopatch.models.loading import load_model
from orthopatch.patches.gate import Gate, gate_inputs, gate_scores, gates_of
from orthopatch.patches.gates import FEATURES, HEADS, HiddenStates, PromptReader
from orthopatch.patches.gates.base import POOLINGS
from orthopatch.patches.manifest import apply_patch, verify_patch
from orthopatch.serve.config import ServeConfig
from orthopatch.serve.models import load_gates_only, load_local
from orthopatch.train.config import POOLINGS as config_poolings
from orthopatch.train.config import TrainConfig
from orthopatch.train.gate import fit_gate

from .conftest import train_gated_patch

VERBS = ["Tell me how to do", "Explain how to do", "Give steps for", "Describe how I can do"]
HARMFUL = [f"{VERBS[i % 4]} the forbidden thing number {i}." for i in range(32)]
BENIGN = [f"{VERBS[i % 4]} the garden chores number {i}." for i in range(32)]


@pytest.fixture(scope="module")
def guard(tmp_path_factory):
    """A user's guard model: a tiny BERT sequence classifier (MiniLM's vocabulary) trained to tell the two apart."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    directory = tmp_path_factory.mktemp("guard")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=2, id2label={0: "safe", 1: "unsafe"},
                        label2id={"safe": 0, "unsafe": 1})
    model = BertForSequenceClassification(config)
    batch = tokenizer(HARMFUL[:16] + BENIGN[:16], padding=True, return_tensors="pt")
    labels = torch.tensor([1] * 16 + [0] * 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def spec(kind: str, guard_dir) -> str:
    return f"hf-classifier:{guard_dir}" if kind == "guard" else kind


KINDS = ["hidden", "hidden:all", "encoder", "hidden+encoder", "guard"]


def test_every_registered_kind_is_covered_here():
    covered = {part.split(":")[0] for kind in KINDS for part in spec(kind, "x").split("+")}
    assert covered == set(FEATURES) and set(HEADS) == {"linear", "mlp"}


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_feature_kind_and_head_fits_a_planted_signal(tiny_model, guard, tmp_path, kind, head):
    model, tokenizer, _ = load_model(str(tiny_model), device="cpu")
    data = GateData(HARMFUL[:20], BENIGN[:20], HARMFUL[20:], {"benign": BENIGN[20:]}, {"note": "synthetic"})
    settings = make(TrainConfig, gate={"enabled": True, "features": [spec(kind, guard)], "heads": [head],
                                       "layers": [0.5, 0.9], "l2": [1e-2]}).gate
    gate = fit_gate(model, tokenizer, settings, data)
    report = gate.info["validation"]
    assert report["auroc"] >= 0.95 and report["recall"] >= 0.95 and report["false_positive_rate"] <= 0.25
    assert gate.head.kind == head and {f.kind for f in gate.features} == {p.split(":")[0] for p in
                                                                          spec(kind, "x").split("+")}
    gate.save(tmp_path)
    loaded = Gate.load(tmp_path)
    ids = chat_prompt_ids(tokenizer, HARMFUL[20:] + BENIGN[20:])
    input_ids, attention = left_pad(ids, tokenizer.pad_token_id, torch.device("cpu"))
    inputs = gate_inputs(model, input_ids, attention, gate.layers)
    torch.testing.assert_close(loaded.score(inputs), gate.score(gate_inputs(model, input_ids, attention,
                                                                            gate.layers)))
    assert loaded.threshold == gate.threshold and loaded.describe() == gate.describe()


def gated_patch_of(tiny_model, root, features: list[str]):
    return train_gated_patch(tiny_model, root, features=features)


@pytest.mark.parametrize("kind", ["hidden:all", "encoder", "guard"])
def test_a_gated_patch_of_each_kind_survives_save_verify_and_attach(tiny_model, guard, tmp_path, kind, capsys):
    patch = gated_patch_of(tiny_model, tmp_path, [spec(kind, guard)])
    manifest = verify_patch(patch)
    gate = Gate.load(patch)
    assert manifest["gate"]["features"] == [f.config() for f in gate.features]
    assert (patch / "gate_tokenizer.json").is_file() == gate.reads_text
    base, tokenizer, info = load_model(str(tiny_model), device="cpu")
    model, _ = apply_patch(base, patch, info.fingerprint)
    runtime = gates_of(model)[0]
    scores = gate_scores(runtime, tokenizer, PROBES)
    ids = chat_prompt_ids(tokenizer, PROBES)
    input_ids, attention = left_pad(ids, tokenizer.pad_token_id, torch.device("cpu"))
    plain = load_model(str(tiny_model), device="cpu")[0]  # the base without the patch's hooks
    direct = gate.score(gate_inputs(plain, input_ids, attention, gate.layers))
    torch.testing.assert_close(torch.tensor(scores), direct)
    assert main(["patch", "info", str(patch)]) == 0
    assert gate.describe() in capsys.readouterr().out
    for load in (load_local, load_gates_only):  # the server decides the same, with the base or with no layer of it
        served = load(make(ServeConfig, model=str(tiny_model), patches=[f"gated={patch}"]))
        routes = served.route(["gated"] * len(PROBES), ids)
        torch.testing.assert_close(torch.tensor([r["gate"]["score"] for r in routes]), direct)


PROBES = ["Tell me how to do the forbidden thing number 99.", "What is the capital of France?", "Who wrote Hamlet?"]


def test_a_changed_guard_model_stops_the_patch_from_loading(tiny_model, guard, tmp_path, capsys):
    own = tmp_path / "guard"
    shutil.copytree(guard, own)
    patch = gated_patch_of(tiny_model, tmp_path, [f"hf-classifier:{own}"])
    weights = own / "model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(weights), metadata={"format": "pt"})
    capsys.readouterr()  # what fitting printed (library progress bars) is not the command's
    assert main(["patch", "verify", str(patch)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gate.json" in err[0] and "features[0].sha256" in err[0]


def test_a_guard_that_is_not_a_classifier_directory_is_refused(tiny_model, tmp_path):
    model, tokenizer, _ = load_model(str(tiny_model), device="cpu")
    data = GateData(HARMFUL[:4], BENIGN[:4], HARMFUL[4:8], {"benign": BENIGN[4:8]}, {})
    settings = make(TrainConfig, gate={"enabled": True, "features": [f"hf-classifier:{tmp_path}"]}).gate
    with pytest.raises(UserError, match="config.json and model.safetensors"):
        fit_gate(model, tokenizer, settings, data)
    settings = make(TrainConfig, gate={"enabled": True, "features": ["nonsense"]}).gate
    with pytest.raises(UserError, match="unknown gate feature kind 'nonsense'"):
        fit_gate(model, tokenizer, settings, data)


def test_the_reader_gives_back_the_text_the_user_wrote(tiny_model):
    _, tokenizer, _ = load_model(str(tiny_model), device="cpu")
    reader = PromptReader.of(tokenizer)
    prompts = ["What is the capital of France?", "Two lines:\nred, blue.", " spaced  out "]
    input_ids, attention = left_pad(chat_prompt_ids(tokenizer, prompts), tokenizer.pad_token_id,
                                    torch.device("cpu"))
    assert reader.texts(input_ids, attention) == prompts
    raw = tokenizer(["The quick brown fox."], return_tensors="pt")
    assert reader.texts(raw["input_ids"], raw["attention_mask"]) == ["The quick brown fox."]


def test_last_plus_mean_pooling_reads_both_and_is_saved_in_the_second_format(tiny_model, tmp_path):
    model, tokenizer, _ = load_model(str(tiny_model), device="cpu")
    data = GateData(HARMFUL[:20], BENIGN[:20], HARMFUL[20:], {"benign": BENIGN[20:]}, {"note": "synthetic"})
    settings = make(TrainConfig, gate={"enabled": True, "poolings": ["last+mean"], "layers": [0.5],
                                       "l2": [1e-2]}).gate
    gate = fit_gate(model, tokenizer, settings, data)
    assert gate.info["validation"]["auroc"] >= 0.95
    input_ids, attention = left_pad(chat_prompt_ids(tokenizer, PROBES), tokenizer.pad_token_id, torch.device("cpu"))
    inputs = gate_inputs(model, input_ids, attention, gate.layers)
    layer = gate.layers[0]
    both = [HiddenStates([layer], pooling).extract(inputs) for pooling in ("last", "mean")]
    torch.testing.assert_close(gate.features[0].extract(inputs), torch.cat(both, dim=1))
    gate.save(tmp_path)
    saved = json.loads((tmp_path / "gate.json").read_text())
    assert saved["format"] == "orthopatch-gate/2" and saved["features"][0]["pooling"] == "last+mean"
    torch.testing.assert_close(Gate.load(tmp_path).score(inputs), gate.score(inputs))
    first = {"format": "orthopatch-gate/1", "layer": layer, "pooling": "last+mean", "threshold": saved["threshold"],
             "bias": 0.0}
    (tmp_path / "gate.json").write_text(json.dumps(first))
    with pytest.raises(UserError, match="pooling"):  # the first format never held both
        Gate.load(tmp_path)
    with pytest.raises(UserError, match="median"):
        make(TrainConfig, gate={"enabled": True, "poolings": ["median"]})
    assert config_poolings == POOLINGS  # what a config may name is what a gate can read
