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
from orthopatch.patches.stack import export_patch
from orthopatch.serve.config import ServeConfig
from orthopatch.serve.models import load_gates_only, load_local
from orthopatch.train.config import FEATURE_KINDS, HEAD_KINDS, TrainConfig
from orthopatch.train.config import POOLINGS as config_poolings
from orthopatch.train.gate import fit_gate

from .conftest import build_model, build_tokenizer, train_gated_patch

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


GUARD_TEMPLATE = ("<|im_start|>Is this request safe or unsafe?\n{% for m in messages %}{{ m['content'] }}\n"
                  "{% endfor %}Answer:")


@pytest.fixture(scope="module")
def generative_guard(tmp_path_factory):
    """A generative guard shaped like Llama Guard: a tiny causal LM answering "safe" / "unsafe" under its own
    template, trained for a few steps to tell the two kinds of prompt apart."""
    directory = tmp_path_factory.mktemp("generative-guard")
    tokenizer = build_tokenizer()
    tokenizer.chat_template = GUARD_TEMPLATE
    model = build_model("llama", len(tokenizer))
    from orthopatch.patches.gates.generative_guard import answer_tokens

    safe, unsafe = answer_tokens(tokenizer, directory)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in HARMFUL[:16] + BENIGN[:16]]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    target = torch.tensor([unsafe] * 16 + [safe] * 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(**batch).logits[:, -1], target).backward()
        optimizer.step()
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def spec(kind: str, guard_dir, generative_dir="x") -> str:
    return {"guard": f"hf-classifier:{guard_dir}", "generative": f"hf-guard:{generative_dir}"}.get(kind, kind)


KINDS = ["hidden", "hidden:all", "encoder", "hidden+encoder", "guard", "generative", "tuned-encoder",
         "hidden+tuned-encoder"]


def test_every_registered_kind_is_covered_here():
    covered = {part.split(":")[0] for kind in KINDS for part in spec(kind, "x").split("+")}
    assert covered == set(FEATURES) and set(HEADS) == {"linear", "mlp"}


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_feature_kind_and_head_fits_a_planted_signal(tiny_model, guard, generative_guard, tmp_path, kind, head):
    model, tokenizer, _ = load_model(str(tiny_model), device="cpu")
    data = GateData(HARMFUL[:20], BENIGN[:20], HARMFUL[20:], {"benign": BENIGN[20:]}, {"note": "synthetic"})
    settings = make(TrainConfig, gate={"enabled": True, "features": [spec(kind, guard, generative_guard)],
                                       "heads": [head],
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


@pytest.mark.parametrize("kind", ["hidden:all", "encoder", "guard", "generative", "tuned-encoder"])
def test_a_gated_patch_of_each_kind_survives_save_verify_and_attach(tiny_model, guard, generative_guard, tmp_path,
                                                                     kind, capsys):
    patch = gated_patch_of(tiny_model, tmp_path, [spec(kind, guard, generative_guard)])
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
    # an exported copy (another directory, as on another machine) carries the gate's own files and scores the same
    (tmp_path / "elsewhere").mkdir()
    exported = export_patch(patch, tmp_path / "elsewhere" / "patch")
    shutil.rmtree(patch)
    moved = Gate.load(exported)
    assert all(name in verify_patch(exported)["files"] for f in moved.features for name in f.files)
    torch.testing.assert_close(moved.score(gate_inputs(plain, input_ids, attention, moved.layers)), direct)


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


def test_a_patch_whose_guard_moved_finds_it_on_the_model_path(tiny_model, guard, tmp_path, monkeypatch, capsys):
    """An exported patch on another machine: the guard is not where the gate was fitted, but a folder of the same
    name on ORTHOPATCH_MODEL_PATH is, and its sha256 pin says it is the same model."""
    own = tmp_path / "fitted-here" / "guard"
    shutil.copytree(guard, own)
    patch = gated_patch_of(tiny_model, tmp_path, [f"hf-classifier:{own}"])
    elsewhere = tmp_path / "another-machine"
    elsewhere.mkdir()
    own.rename(elsewhere / "guard")
    capsys.readouterr()
    monkeypatch.delenv("ORTHOPATCH_MODEL_PATH", raising=False)
    assert main(["patch", "verify", str(patch)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ORTHOPATCH_MODEL_PATH" in err[0]
    monkeypatch.setenv("ORTHOPATCH_MODEL_PATH", str(elsewhere))
    assert main(["patch", "verify", str(patch)]) == 0


def test_a_guard_that_is_not_a_classifier_directory_is_refused(tiny_model, tmp_path):
    model, tokenizer, _ = load_model(str(tiny_model), device="cpu")
    data = GateData(HARMFUL[:4], BENIGN[:4], HARMFUL[4:8], {"benign": BENIGN[4:8]}, {})
    settings = make(TrainConfig, gate={"enabled": True, "features": [f"hf-classifier:{tmp_path}"]}).gate
    with pytest.raises(UserError, match="config.json and model.safetensors"):
        fit_gate(model, tokenizer, settings, data)
    with pytest.raises(UserError, match="unknown value 'nonsense'"):  # names are checked when the config is read
        make(TrainConfig, gate={"enabled": True, "features": ["hidden+nonsense"]})


def _word_level_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[UNK]")


@pytest.mark.parametrize("problem", ["pickle", "no-weights", "no-template", "no-answer-words", "not-a-directory"])
def test_a_generative_guard_that_cannot_serve_stops_training_before_it_starts(tiny_model, generative_guard,
                                                                             tmp_path, capsys, problem):
    own = tmp_path / "guard"
    shutil.copytree(generative_guard, own)
    if problem == "pickle":
        (own / "pytorch_model.bin").write_bytes(b"not opened")
    elif problem == "no-weights":
        (own / "model.safetensors").unlink()
    elif problem == "no-template":
        config = json.loads((own / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (own / "tokenizer_config.json").write_text(json.dumps(config))
        (own / "chat_template.jinja").unlink(missing_ok=True)
    elif problem == "no-answer-words":
        tokenizer = _word_level_tokenizer()
        tokenizer.chat_template = GUARD_TEMPLATE
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            (own / name).unlink(missing_ok=True)
        tokenizer.save_pretrained(own)
    else:
        shutil.rmtree(own)
    output = tmp_path / "patch"
    code = main(["train", "--model", str(tiny_model), "--data", "advbench", "--set", "max_examples=4", "--output",
                 str(output), "--set", "gate.enabled=true", "--set", f'gate.features=["hf-guard:{own}"]',
                 "--set", "device=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(own) in err[0], err
    assert not output.exists()


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
    assert set(FEATURE_KINDS) == set(FEATURES) and set(HEAD_KINDS) == set(HEADS)


def test_the_server_serves_a_patch_of_each_kind(tiny_model, guard, generative_guard, tmp_path):
    """One server, a gated patch of every feature kind: through the official client each answer carries the gate
    score that the patch computes offline."""
    openai = pytest.importorskip("openai")
    from orthopatch.serve.process import ServerProcess

    kinds = {"hidden": "hidden", "encoder": "encoder", "guard": "guard", "generative": "generative",
             "tuned": "tuned-encoder"}
    for name in kinds:
        (tmp_path / name).mkdir()
    patches = {name: gated_patch_of(tiny_model, tmp_path / name, [spec(kind, guard, generative_guard)])
               for name, kind in kinds.items()}
    base, tokenizer, info = load_model(str(tiny_model), device="cpu")
    offline = {}
    for name, patch in patches.items():
        model, _ = apply_patch(load_model(str(tiny_model), device="cpu")[0], patch, info.fingerprint)
        offline[name] = gate_scores(gates_of(model)[0], tokenizer, PROBES[:2])
    process = ServerProcess("--model", str(tiny_model), *[a for name, patch in patches.items()
                                                          for a in ("--patch", f"{name}={patch}")])
    try:
        api = openai.OpenAI(base_url=process.url + "/v1", api_key="unused", max_retries=0)
        for name in patches:
            for index, prompt in enumerate(PROBES[:2]):
                response = api.chat.completions.create(model=name, messages=[{"role": "user", "content": prompt}],
                                                       max_tokens=2, temperature=0)
                gate = response.model_extra["orthopatch"]["gate"]
                assert gate["score"] == pytest.approx(offline[name][index], abs=1e-3), name
    finally:
        assert process.stop() == 0
