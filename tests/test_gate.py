"""The selective patch's gate on tiny models: the probe finds a planted linear signal, gated generation is the base's
for gate-off prompts (bit for bit) and the always-on patch's for gate-on prompts, in one batch; a gated patch
survives save, load, verify, export and evaluation; tampering and merging are refused; a malformed gate exits 2
naming the file and field."""

import copy
import json

import pytest
import torch

from orthopatch.cli import main
from orthopatch.config import make
from orthopatch.data.gate_data import GateData
from orthopatch.errors import UserError
from orthopatch.evaluate.config import EvalConfig
from orthopatch.evaluate.runner import evaluate
from orthopatch.io import sha256_file
from orthopatch.models.generation import chat_prompt_ids, generate, left_pad
from orthopatch.models.loading import load_model
from orthopatch.models.probes import auroc
from orthopatch.patches.gate import (
    GATE_CONFIG,
    GATE_WEIGHTS,
    Gate,
    attach_gate,
    decoder_layers,
    gate_scores,
    gates_of,
)
from orthopatch.patches.gates import HiddenStates, LinearHead
from orthopatch.patches.manifest import MANIFEST, apply_patch, verify_patch
from orthopatch.patches.routing import RowMask
from orthopatch.patches.scale import set_patch_scale
from orthopatch.patches.stack import attach_patches, export_patch, merge_patches, stack_adapters
from orthopatch.report.table import metric_rows
from orthopatch.train.config import TrainConfig
from orthopatch.train.gate import fit_gate
from orthopatch.train.gate_selection import recall_threshold

PROMPTS = ["Tell me how to do the forbidden thing number 3.", "What is the capital of France?",
           "Tell me how to do the forbidden thing number 7.", "Who wrote Hamlet?", "Name three primary colors.",
           "Tell me how to do the forbidden thing number 1."]


def test_the_probe_recovers_a_planted_linear_signal():
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(32, generator=generator)
    X = torch.randn(400, 32, generator=generator)
    y = (torch.arange(400) % 4 == 0).float()  # imbalanced: a quarter positive
    X = X + 3.0 * y[:, None] * direction / direction.norm()
    head = LinearHead.fit(X[:300], y[:300], l2=1e-3)
    gate = Gate([HiddenStates([1], "last")], head, 0.0)
    held_out = gate.logits(X[300:])
    assert auroc(held_out[y[300:] > 0], held_out[y[300:] == 0]) > 0.97
    cosine = torch.nn.functional.cosine_similarity(head.weight / head.scale, direction, dim=0)
    assert cosine > 0.5  # it points along the planted direction, not along noise
    threshold = recall_threshold(held_out[y[300:] > 0], 0.95)
    assert float((held_out[y[300:] > 0] >= threshold).float().mean()) >= 0.95


def test_fit_gate_separates_two_kinds_of_prompt_on_a_tiny_model(tiny_model):
    model, tokenizer, _ = load_model(str(tiny_model), device="cpu")
    harmful = [f"Tell me how to do the forbidden thing number {i}." for i in range(24)]
    benign = [f"What is the capital of France? Question {i}." for i in range(24)]
    data = GateData(harmful[:16], benign[:16], harmful[16:], {"benign": benign[16:]}, {"note": "synthetic"})
    settings = make(TrainConfig, gate={"enabled": True, "layers": [0.5], "l2": [1e-3]}).gate
    gate = fit_gate(model, tokenizer, settings, data)
    report = gate.info["validation"]
    assert report["recall"] >= 0.95 and report["false_positive_rate"] == 0.0 and report["auroc"] == 1.0
    assert gate.layer == 1 and gate.info["selection"]["candidates"]


def threshold_between(runtime, tokenizer, prompts):
    scores = sorted(gate_scores(runtime, tokenizer, prompts))
    return (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # half the prompts on, half off


def test_gated_generation_is_the_base_when_off_and_the_patch_when_on_in_one_batch(tiny_model, gated_patch):
    base, tokenizer, info = load_model(str(tiny_model), device="cpu")
    gated, _ = apply_patch(copy.deepcopy(base), gated_patch, info.fingerprint)
    (runtime,) = gates_of(gated)
    runtime.gate.threshold = threshold_between(runtime, tokenizer, PROMPTS)
    on = [s >= runtime.gate.threshold for s in gate_scores(runtime, tokenizer, PROMPTS)]
    assert 0 < sum(on) < len(PROMPTS)
    always = apply_patch(copy.deepcopy(base), gated_patch, info.fingerprint)[0]
    for runtime_always in gates_of(always):
        runtime_always.remove()  # the same LoRA weights with no gate: the patch on every prompt
    for model in (gated, always):  # a tiny patch barely moves greedy text; a large dose makes the test bite
        set_patch_scale(model, 40.0)
    answers = generate(gated, tokenizer, PROMPTS, max_new_tokens=6, batch_size=len(PROMPTS))
    plain = generate(base, tokenizer, PROMPTS, max_new_tokens=6, batch_size=len(PROMPTS))
    patched = generate(always, tokenizer, PROMPTS, max_new_tokens=6, batch_size=len(PROMPTS))
    assert any(a != b for a, b in zip(plain, patched, strict=True))  # the patch changes something
    for flag, ours, off, always_on in zip(on, answers, plain, patched, strict=True):
        assert ours == (always_on if flag else off)
    # bit for bit at the logits: gate-off rows equal the base's
    input_ids, attention = left_pad(chat_prompt_ids(tokenizer, PROMPTS), tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        gated_logits = gated(input_ids=input_ids, attention_mask=attention).logits
        base_logits = base(input_ids=input_ids, attention_mask=attention).logits
    for row, flag in enumerate(on):
        if not flag:
            assert torch.equal(gated_logits[row], base_logits[row])
    gated.unload()
    assert not gates_of(gated)


def gated_at_half(tiny_model, gated_patch):
    """(base, tokenizer, info, gated model, its gate) with a large dose, the gate flagging half of PROMPTS."""
    base, tokenizer, info = load_model(str(tiny_model), device="cpu")
    gated, _ = apply_patch(copy.deepcopy(base), gated_patch, info.fingerprint)
    (runtime,) = gates_of(gated)
    set_patch_scale(gated, 40.0)
    runtime.gate.threshold = threshold_between(runtime, tokenizer, PROMPTS)
    return base, tokenizer, info, gated, runtime


def test_a_batch_with_no_flagged_prompt_skips_the_update_and_still_equals_the_base(tiny_model, gated_patch):
    base, tokenizer, info, gated, runtime = gated_at_half(tiny_model, gated_patch)
    scores = gate_scores(runtime, tokenizer, PROMPTS)
    off = [p for p, s in zip(PROMPTS, scores, strict=True) if s < runtime.gate.threshold]
    on = [p for p, s in zip(PROMPTS, scores, strict=True) if s >= runtime.gate.threshold]
    calls = []
    runtime.rows.layers[0].lora_A[runtime.adapter_name].register_forward_hook(lambda *a: calls.append(1))
    before = [list(layer.active_adapters) for layer in runtime.rows.layers]
    assert generate(gated, tokenizer, off, max_new_tokens=4, batch_size=len(off)) == \
        generate(base, tokenizer, off, max_new_tokens=4, batch_size=len(off))
    assert calls == []  # no row flagged: the update was never computed
    always = apply_patch(copy.deepcopy(base), gated_patch, info.fingerprint)[0]
    gates_of(always)[0].remove()
    set_patch_scale(always, 40.0)
    assert generate(gated, tokenizer, on, max_new_tokens=4, batch_size=len(on)) == \
        generate(always, tokenizer, on, max_new_tokens=4, batch_size=len(on))
    assert calls  # flagged rows: computed again, and the adapters are active as they were
    assert [list(layer.active_adapters) for layer in runtime.rows.layers] == before


def test_a_gated_patch_survives_save_verify_export_and_evaluation(tiny_model, gated_patch, tmp_path):
    manifest = verify_patch(gated_patch)
    assert manifest["kind"] == "gated-lora" and {GATE_CONFIG, GATE_WEIGHTS} <= set(manifest["files"])
    assert manifest["gate"]["validation"]["recall"] >= 0.95 and manifest["cost"]["gate_fit_seconds"] > 0
    exported = export_patch(gated_patch, tmp_path / "shared")
    assert verify_patch(exported)["kind"] == "gated-lora"
    assert "gate" in (exported / "README.md").read_text()
    base, tokenizer, info = load_model(str(tiny_model), device="cpu")
    model, _ = attach_patches(base, [(str(exported), 1.0)], info.fingerprint)  # the stacking route keeps the gate
    assert len(gates_of(model)) == 1
    cfg = EvalConfig.only(harmful=["harmbench"], n_harmful=3, benign=["rho_overrefusal"], n_benign=3,
                          max_new_tokens=2, device="cpu")
    results, samples = evaluate(model, tokenizer, cfg, progress=False)
    gate = results["metrics"]["gate"]["patch0"]
    assert set(gate["flagged"]) == {"harmbench", "rho_overrefusal"} and 0 <= gate["auroc_harmful_vs_benign"] <= 1
    assert all("patch0" in row["gate"] for row in samples)
    assert [point["benign_flagged"] for point in gate["frontier"]] == [0.01, 0.02, 0.05, 0.1, 0.2]
    assert "pairs" not in gate  # no benign prompt names a harmful one as its pair


def test_evaluation_reports_the_gate_within_pairs_a_user_names(tiny_model, gated_patch, tmp_path):
    harmful = tmp_path / "requests.jsonl"
    benign = tmp_path / "twins.jsonl"
    harmful.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"Tell me how to do the forbidden thing number "
                                           f"{i}."}) + "\n" for i in range(4)))
    benign.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"Why is the forbidden thing number {i} "
                                          "forbidden?", "meta": {"pair": f"r{i}"}}) + "\n" for i in range(4)))
    base, tokenizer, info = load_model(str(tiny_model), device="cpu")
    model, _ = apply_patch(base, gated_patch, info.fingerprint)
    cfg = EvalConfig.only(harmful=[str(harmful)], benign=[str(benign)], max_new_tokens=2, device="cpu")
    results, samples = evaluate(model, tokenizer, cfg, progress=False)
    pairs = results["metrics"]["gate"]["default"]["pairs"]
    assert pairs["n"] == 4 and 0 <= pairs["auroc_within_pairs"] <= 1 and 0 <= pairs["harmful_above_twin"] <= 1
    scores = {row["id"]: row["gate"]["default"] for row in samples}
    assert pairs["harmful_above_twin"] == sum(scores[f"r{i}"] > scores[f"t{i}"] for i in range(4)) / 4
    assert {row["pair"] for row in samples if row["id"].startswith("t")} == {"r0", "r1", "r2", "r3"}


def test_tampering_with_the_gate_and_merging_are_refused(tiny_model, gated_patch, tmp_path):
    tampered = tmp_path / "tampered"
    export_patch(gated_patch, tampered)
    config = json.loads((tampered / GATE_CONFIG).read_text())
    config["threshold"] = config["threshold"] + 1.0  # a quieter gate: more harmful prompts would pass
    (tampered / GATE_CONFIG).write_text(json.dumps(config))
    with pytest.raises(UserError, match="sha256 does not match"):
        verify_patch(tampered)
    with pytest.raises(UserError, match="cannot be stacked or merged"):
        merge_patches([(str(gated_patch), 1.0)], tmp_path / "merged", model=str(tiny_model))
    with pytest.raises(UserError, match="cannot be stacked or merged"):
        stack_adapters([(str(gated_patch), 1.0)], tmp_path / "stacked")
    assert not (tmp_path / "merged").exists() and not (tmp_path / "stacked").exists()
    merged = merge_patches([(str(gated_patch), 1.0)], tmp_path / "merged", model=str(tiny_model), unconditional=True)
    assert json.loads((merged / MANIFEST).read_text())["stack"][0]["gate_dropped"] is True
    base, _, info = load_model(str(tiny_model), device="cpu")
    with pytest.raises(UserError, match="cannot be merged"):
        apply_patch(base, gated_patch, info.fingerprint)[0].merge_and_unload()


@pytest.mark.parametrize(("field", "value"), [("layer", 0), ("pooling", "max"), ("threshold", "high"),
                                              ("format", "other/9"), ("unformatted", "text")])
def test_a_malformed_gate_exits_2_naming_the_file_and_field(gated_patch, tmp_path, capsys, field, value):
    broken = tmp_path / "broken"
    export_patch(gated_patch, broken)
    config = json.loads((broken / GATE_CONFIG).read_text())
    config[field] = value
    (broken / GATE_CONFIG).write_text(json.dumps(config))
    manifest = json.loads((broken / MANIFEST).read_text())  # re-hashed: the schema check, not the hash, must catch it
    manifest["files"][GATE_CONFIG] = sha256_file(broken / GATE_CONFIG)
    (broken / MANIFEST).write_text(json.dumps(manifest))
    assert main(["patch", "verify", str(broken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and GATE_CONFIG in err[0] and f"field '{field}'" in err[0]


def test_a_gate_file_that_is_not_safetensors_exits_2(gated_patch, tmp_path, capsys):
    broken = tmp_path / "broken"
    export_patch(gated_patch, broken)
    (broken / GATE_WEIGHTS).write_bytes(b"not a tensor file")
    manifest = json.loads((broken / MANIFEST).read_text())
    manifest["files"][GATE_WEIGHTS] = sha256_file(broken / GATE_WEIGHTS)
    (broken / MANIFEST).write_text(json.dumps(manifest))
    assert main(["patch", "verify", str(broken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and GATE_WEIGHTS in err[0]


def test_attaching_a_gate_to_an_adapter_that_is_not_there_is_refused(tiny_model, gated_patch):
    base, _, info = load_model(str(tiny_model), device="cpu")
    model, _ = apply_patch(base, gated_patch, info.fingerprint)
    with pytest.raises(UserError, match="no LoRA layers"):
        attach_gate(model, "missing", Gate.load(gated_patch))


def test_info_diff_and_analyze_take_a_gated_patch(tiny_model, gated_patch, tmp_path, capsys):
    from orthopatch.recipes.analyze import gate_separation

    assert main(["patch", "info", str(gated_patch)]) == 0
    assert "gate: linear probe on hidden states of layer" in capsys.readouterr().out
    copy_ = export_patch(gated_patch, tmp_path / "copy")
    assert main(["patch", "diff", str(gated_patch), str(copy_), "--model", str(tiny_model), "--labels", "a", "b"]) == 0
    assert "MSO input 1.0000" in capsys.readouterr().out  # the LoRA part of a patch against its own copy
    base, tokenizer, info = load_model(str(tiny_model), device="cpu")
    model, _ = apply_patch(base, gated_patch, info.fingerprint)
    report = gate_separation(model, tokenizer, PROMPTS[1::2], PROMPTS[0::2])
    assert report["layer"] == gates_of(model)[0].gate.layer and 0 <= report["auroc"] <= 1
    assert 0 <= report["flagged_benign"] <= 1


def test_row_masks_of_two_adapters_park_and_unpark_independently(tiny_model, gated_patch):
    """Two adapters on the same layers: parking and unparking one never switches the other on or off, and an
    unparked adapter goes back to its place in the load order (the server routes rows of one batch to either)."""
    base, _, info = load_model(str(tiny_model), device="cpu")
    model, _ = attach_patches(base, [(str(gated_patch), 1.0), (str(gated_patch), 1.0)], info.fingerprint, gates=False)
    first, second = RowMask(model, "patch0"), RowMask(model, "patch1")
    layer = first.layers[0]
    for a, b, expected in [(False, True, ["patch1"]), (False, False, []), (True, False, ["patch0"]),
                           (True, True, ["patch0", "patch1"]), (False, True, ["patch1"]),
                           (True, True, ["patch0", "patch1"])]:
        first.set(torch.tensor([a]))
        second.set(torch.tensor([b]))
        assert list(layer.active_adapters) == expected
    second.set(torch.tensor([False]))
    first.set(torch.tensor([False]))
    second.set(torch.tensor([True]))  # unparked in the other order: still the load order
    first.set(torch.tensor([True]))
    assert list(layer.active_adapters) == ["patch0", "patch1"]
    first.remove()
    second.remove()
    assert list(layer.active_adapters) == ["patch0", "patch1"]


def prompt_passes(model) -> list[int]:
    """Counts the first decoder layer's passes over prompts (more than one token: not a decoding step)."""
    calls: list[int] = []
    layer = decoder_layers(model.get_base_model())[0]
    layer.register_forward_hook(lambda _m, args, _o: calls.append(1) if args[0].shape[1] > 1 else None)
    return calls


def test_generation_reuses_the_gates_pass_and_answers_as_without_it(tiny_model, gated_patch):
    _, tokenizer, _, gated, runtime = gated_at_half(tiny_model, gated_patch)
    scores = gate_scores(runtime, tokenizer, PROMPTS)
    input_ids, attention = left_pad(chat_prompt_ids(tokenizer, PROMPTS), tokenizer.pad_token_id, "cpu")
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    passes = prompt_passes(gated)
    plain = type(gated).generate(gated, input_ids=input_ids, attention_mask=attention, **settings)
    assert len(passes) == 2  # the gate's own partial pass, then the prefill
    passes.clear()
    reused = gated.generate(input_ids=input_ids, attention_mask=attention, **settings)
    assert len(passes) == 2  # one shared base pass, then the flagged rows' prefill with the patch
    assert torch.equal(reused, plain)
    assert runtime.scores.tolist() == pytest.approx(scores, abs=1e-5)
    passes.clear()
    assert gate_scores(runtime, tokenizer, PROMPTS) == pytest.approx(scores, abs=1e-5)
    assert passes == []  # the scores generation computed are reported without another pass
    off = [i for i, s in enumerate(scores) if s < runtime.gate.threshold]
    passes.clear()
    assert torch.equal(gated.generate(input_ids=input_ids[off], attention_mask=attention[off], **settings),
                       type(gated).generate(gated, input_ids=input_ids[off], attention_mask=attention[off],
                                            **settings))
    assert len(passes) == 1 + 2  # reused: the base pass alone; plain: the gate's pass and the prefill
    runtime.remove()  # an always-on patch generates plainly
    assert not gates_of(gated)
    torch.testing.assert_close(gated.generate(input_ids=input_ids, attention_mask=attention, **settings),
                               type(gated).generate(gated, input_ids=input_ids, attention_mask=attention, **settings))


def test_a_batch_mostly_flagged_stops_the_base_pass_at_the_gates_layer(tiny_model, gated_patch):
    _, tokenizer, _, gated, runtime = gated_at_half(tiny_model, gated_patch)
    runtime.gate.threshold = -1e9  # every prompt flagged
    input_ids, attention = left_pad(chat_prompt_ids(tokenizer, PROMPTS), tokenizer.pad_token_id, "cpu")
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    last = decoder_layers(gated.get_base_model())[-1]
    assert runtime.gate.layer < len(decoder_layers(gated.get_base_model()))  # the gate reads below the top
    deepest: list[int] = []
    last.register_forward_hook(lambda _m, args, _o: deepest.append(1) if args[0].shape[1] > 1 else None)
    reused = gated.generate(input_ids=input_ids, attention_mask=attention, **settings)
    assert len(deepest) == 1  # the base pass stopped at the gate; only the patched prefill reached the top
    assert torch.equal(reused, type(gated).generate(gated, input_ids=input_ids, attention_mask=attention,
                                                    **settings))


def test_a_gate_evaluated_without_benign_sets_reports_no_separation():
    flagged = {"value": 0.5, "n": 2, "ci95": [0.1, 0.9]}
    results = {"metrics": {"gate": {"default": {"flagged": {"harmbench": flagged}, "auroc_harmful_vs_benign": None}}},
               "data": {}}
    labels = [label for label, _, _ in metric_rows(results)]
    assert "gate default: prompts flagged (patch on): harmbench" in labels
    assert not any("AUROC" in label for label in labels)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_reading_many_prompts_with_their_opening_shared_gives_each_prompt_s_own_values(tiny_models, arch):
    """Fitting reads a batch's common opening once; pooled over the attended tokens, every row's hidden states are
    what one pass over that prompt alone gives."""
    from orthopatch.patches.gate import many_gate_inputs
    from orthopatch.patches.gates import pool
    from orthopatch.patches.hidden_pass import layer_features

    model, tokenizer, _ = load_model(str(tiny_models[arch]), device="cpu")
    prompts = ["Tell me a short story about a dragon.", "What is two plus two?", "Hi",
               "Write a poem about the sea and the ships that sail on it at night."]
    rows = chat_prompt_ids(tokenizer, prompts)
    shared = many_gate_inputs(model, rows, tokenizer.pad_token_id, [1, 2])
    assert shared.input_ids.shape[1] < max(map(len, rows)) * 2  # one layout for the batch
    for i, row in enumerate(rows):
        alone = layer_features(model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long), [1, 2])
        for layer in (1, 2):
            for pooling in ("last", "mean"):
                torch.testing.assert_close(
                    pool(shared.hidden[layer][i:i + 1], shared.attention[i:i + 1], pooling),
                    pool(alone[layer], torch.ones(1, len(row), dtype=torch.long), pooling), atol=1e-5, rtol=1e-4)
