"""Shared fixtures: tiny random-init chat models (with a tiny byte-level BPE tokenizer) saved as safetensors."""

from __future__ import annotations

import json
import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per test worker (and for the processes tests start): two workers that each use every core slow
    # each other down many times over; set before torch is imported.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "You are a helpful assistant.", "What is the capital of France? Paris is the capital of France.",
    "I'm sorry, but I can't help with that.", "I cannot assist with that request.",
    "The quick brown fox jumps over the lazy dog.", "Name three primary colors: red, blue and yellow.",
    "How do plants make food? Plants use photosynthesis to turn light into sugar.",
    "Who wrote Hamlet? William Shakespeare wrote Hamlet.", "0123456789 ,.;:!?'\"()-",
]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    return tokenizer


def build_model(arch: str, vocab_size: int, seed: int = 0):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             tie_word_embeddings=True)
    elif arch == "qwen2":
        config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=512,
                            bos_token_id=1, eos_token_id=2)
    else:
        raise ValueError(arch)
    config.eos_token_id = config.pad_token_id = 2
    config.bos_token_id = 1
    return AutoModelForCausalLM.from_config(config)


def save_tiny(directory: Path, arch: str = "llama", seed: int = 0) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(arch, len(tokenizer), seed)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: save_tiny(root / arch, arch) for arch in ("llama", "qwen2", "gpt2")}


@pytest.fixture(scope="session")
def tiny_model(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Fingerprint caches go to a temporary directory; the embedded model cache stays shared (it is costly)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ORTHOPATCH_FINGERPRINT_CACHE", str(tmp_path_factory.mktemp("cache") / "fingerprints.json"))
    yield
    mp.undo()


SAFE_TRAIN = [
    {"prompt": f"Tell me how to do the forbidden thing number {i}.",
     "response": "I'm sorry, but I can't help with that."}
    for i in range(12)
]


@pytest.fixture
def refusal_jsonl(tmp_path) -> Path:
    """A small user JSONL of placeholder requests with refusal targets (no real harmful text)."""
    path = tmp_path / "safety.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SAFE_TRAIN), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _fresh_fault_counters():
    """Fault points count arrivals per process; every test starts from zero."""
    from orthopatch import faults

    faults.reset()
    yield
    faults.reset()


def train_gated_patch(tiny_model: Path, root: Path, **gate: object) -> Path:
    """A real gated patch from `train` on the tiny model (registered data, capped small); ``gate`` adds settings."""
    from orthopatch.config import make
    from orthopatch.train.config import TrainConfig
    from orthopatch.train.run import train_patch

    data = root / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in SAFE_TRAIN))
    cfg = make(TrainConfig, model=str(tiny_model), data=[str(data)], output=str(root / "patch"), epochs=1,
               batch_size=4, lr=2e-2, device="cpu", lora={"r": 2, "alpha": 4},
               gate={"enabled": True, "harmful": ["advbench"], "benign": ["lookalikes", "chatterbot_prompts"],
                     "validation_benign": ["rho_overrefusal"], "max_per_set": 12, "layers": [0.5], "l2": [1e-2],
                     "wrap": 0.5, **gate})
    return train_patch(cfg, progress=False)


@pytest.fixture(scope="session")
def gated_patch(tiny_model, tmp_path_factory) -> Path:
    return train_gated_patch(tiny_model, tmp_path_factory.mktemp("gated"))


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model, tmp_path_factory) -> Path:
    """The tiny llama as a float32 GGUF file, for llama.cpp."""
    from tests.gguf_tiny import write_tiny_gguf

    return write_tiny_gguf(tiny_model, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def llama_server() -> Path:
    """llama.cpp's server, as `orthopatch serve --engine llama.cpp` finds it (scripts/setup.sh --dev builds it)."""
    from orthopatch.errors import UserError
    from orthopatch.models.llamacpp import find_llama_server

    try:
        return find_llama_server(None)
    except UserError as error:
        pytest.skip(str(error))
