import pytest

from orthopatch.errors import UserError
from orthopatch.train.tokenize import IGNORE_INDEX, pad_batch, tokenize_chat
from tests.conftest import build_tokenizer

TOK = build_tokenizer()


def labelled_text(example):
    return TOK.decode([t for t in example.labels if t != IGNORE_INDEX])


def test_only_assistant_tokens_are_labelled():
    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris is the capital of France."}]
    example = tokenize_chat(TOK, messages, 256, "a")
    assert labelled_text(example).startswith("Paris is the capital of France.<|im_end|>")
    prompt_len = len(TOK.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False))
    assert example.n_label_tokens < len(example.input_ids)
    assert all(label == IGNORE_INDEX for label in example.labels[: prompt_len // 8])


def test_multi_turn_labels_every_assistant_turn_and_no_user_turn():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Name a color"},
                {"role": "assistant", "content": "Blue"}]
    text = labelled_text(tokenize_chat(TOK, messages, 256, "b"))
    assert "Hello" in text and "Blue" in text and "Hi" not in text and "Name" not in text


def test_truncation_that_removes_all_labels_is_an_error():
    messages = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 5},
                {"role": "assistant", "content": "Yes."}]
    with pytest.raises(UserError, match="no assistant tokens"):
        tokenize_chat(TOK, messages, 16, "c")


def test_pad_batch_masks_padding():
    a = tokenize_chat(TOK, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], 64, "a")
    b = tokenize_chat(TOK, [{"role": "user", "content": "Name three primary colors"},
                            {"role": "assistant", "content": "red, blue and yellow"}], 64, "b")
    batch = pad_batch([a, b], TOK.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    short = len(a.input_ids)
    assert batch["attention_mask"][0, short:].sum() == 0
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
