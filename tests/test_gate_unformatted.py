"""A gate reads an unformatted input (raw text: a perplexity pass, a completion endpoint) as the chat message it would
be: the wrap of a chat template, told from a formatted prompt by the template's own tokens; a gated patch scores raw
text exactly as that message, in its own pass, in generation and on save and load; the older reading stays
available (and is what a gate made before it keeps)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from orthopatch.config import make
from orthopatch.errors import UserError
from orthopatch.models.generation import chat_prompt_ids, left_pad, unpadded
from orthopatch.models.loading import load_model
from orthopatch.patches.gate import Gate, gates_of
from orthopatch.patches.gates.unformatted import ChatWrap
from orthopatch.patches.manifest import apply_patch
from orthopatch.train.config import TrainConfig
from tests.conftest import build_tokenizer

TEXT = "What is the capital of France?"
RAW = ["Paris is the capital of France.", "I cannot assist with that request."]


def test_a_chat_wrap_reads_raw_text_as_the_message_it_would_be():
    tokenizer = build_tokenizer()
    wrap = ChatWrap.of(tokenizer)
    raw, formatted = tokenizer(TEXT)["input_ids"], chat_prompt_ids(tokenizer, [TEXT])[0]
    assert wrap.is_raw(raw) and not wrap.is_raw(formatted)
    assert wrap.as_chat(raw) == formatted
    answered = formatted + tokenizer("Paris.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert not wrap.is_raw(answered)  # a prompt with its answer is still formatted
    assert wrap.is_raw(raw + [tokenizer.eos_token_id])  # raw text that ends in EOS is still raw
    assert ChatWrap.from_config(json.loads(json.dumps(wrap.config())), None) == wrap


def test_a_batch_is_rewrapped_only_where_a_row_is_unformatted():
    tokenizer = build_tokenizer()
    wrap = ChatWrap.of(tokenizer)
    formatted = chat_prompt_ids(tokenizer, [TEXT, RAW[0]])
    input_ids, attention = left_pad(formatted, tokenizer.pad_token_id, torch.device("cpu"))
    same = wrap.apply(input_ids, attention)
    assert same[0] is input_ids and same[1] is attention
    raw = tokenizer(RAW, padding=True, padding_side="right", return_tensors="pt")  # as a perplexity pass pads
    mixed_ids, mixed_attention = left_pad([formatted[0], raw["input_ids"][0][raw["attention_mask"][0].bool()].tolist()],
                                          tokenizer.pad_token_id, torch.device("cpu"))
    for ids, mask in (wrap.apply(raw["input_ids"], raw["attention_mask"]), wrap.apply(mixed_ids, mixed_attention)):
        rows = unpadded(ids, mask)
        assert all(not wrap.is_raw(row) for row in rows)
    assert rows == chat_prompt_ids(tokenizer, [TEXT, RAW[0]])


def test_a_template_without_tokens_of_its_own_has_no_wrap():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Assistant:"
    assert ChatWrap.of(tokenizer) is None  # formatted and raw inputs cannot be told apart


@pytest.mark.parametrize(("key", "value", "field"), [("read_as", "text", "unformatted"),
                                                     ("markers", [], "unformatted.markers"),
                                                     ("prefix", [1, -2], "unformatted.prefix"),
                                                     ("suffix", "2", "unformatted.suffix")])
def test_a_malformed_wrap_names_its_field(key, value, field, tmp_path):
    config = {**ChatWrap.of(build_tokenizer()).config(), key: value}
    with pytest.raises(UserError) as error:
        ChatWrap.from_config(config, tmp_path / "gate.json")
    assert error.value.field == field


def test_a_gated_patch_scores_raw_text_as_the_message_it_would_be(tiny_model, gated_patch):
    base, tokenizer, info = load_model(str(tiny_model), device="cpu")
    saved = json.loads((gated_patch / "gate.json").read_text())
    assert saved["unformatted"]["read_as"] == "chat" and Gate.load(gated_patch).wrap == ChatWrap.of(tokenizer)
    model, _ = apply_patch(copy.deepcopy(base), gated_patch, info.fingerprint)
    runtime = gates_of(model)[0]
    inner = model.get_base_model()
    raw = tokenizer(RAW, padding=True, padding_side="right", return_tensors="pt")
    formatted = left_pad(chat_prompt_ids(tokenizer, RAW), tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        as_chat = runtime.decide(inner, raw["input_ids"], raw["attention_mask"])
        assert torch.allclose(as_chat, runtime.decide(inner, *formatted), atol=1e-5)
        model(**raw)  # a perplexity pass: the pre-hook decides the same
        assert torch.allclose(runtime.scores, as_chat, atol=1e-5)
        model.generate(input_ids=raw["input_ids"][:1], attention_mask=raw["attention_mask"][:1], max_new_tokens=2,
                       do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert torch.allclose(runtime.scores, as_chat[:1], atol=1e-5)  # generation from raw text reads it so too
        runtime.gate.wrap = None  # read as it is (a gate made before this reading)
        assert not torch.allclose(runtime.decide(inner, raw["input_ids"], raw["attention_mask"]), as_chat, atol=1e-3)


def test_unformatted_copies_are_fitted_on_only_as_they_are():
    with pytest.raises(UserError, match="as-is"):
        make(TrainConfig, gate={"enabled": True, "raw": 0.2})
    assert make(TrainConfig, gate={"enabled": True, "raw": 0.2, "unformatted": "as-is"}).gate.raw == 0.2
