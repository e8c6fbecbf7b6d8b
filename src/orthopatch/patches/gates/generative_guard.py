"""Feature kind ``hf-guard``: a generative guard model (Llama Guard, ShieldGemma, WildGuard and the like: a causal LM
that answers "safe" or "unsafe" under its own template) reads the prompt's text; the feature is
log P("unsafe") - log P("safe") for the first answer token.

``hf-guard:DIR`` names a local transformers directory: safetensors weights only (a directory holding pickle
weights is refused), no remote code, a chat template (rendered by transformers in Jinja2's sandbox) and a
vocabulary whose answer words "safe" and "unsafe" begin with different tokens. The weights are pinned by sha256
when the gate is fitted and checked when it is loaded. Thresholded on the validation prompts like any gate.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orthopatch.errors import UserError
from orthopatch.io import sha256_file, sha256_json
from orthopatch.patches.gates.base import Feature, GateInputs
from orthopatch.patches.gates.local_model import pinned_directory, positive_int
from orthopatch.patches.gates.registry import register_feature

PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")
MAX_TOKENS = 1024
BATCH = 8


def guard_dir(name: str) -> Path:
    """A guard directory, checked before any weight is read."""
    path = Path(name)
    if not (path / "config.json").is_file():
        raise UserError("not a guard model directory: it needs config.json", path=path)
    pickles = sorted(p.name for pattern in PICKLES for p in path.glob(pattern))
    if pickles:
        raise UserError(f"refusing pickle weights ({', '.join(pickles)}); give the guard's safetensors only",
                        path=path)
    if not sorted(path.glob("*.safetensors")):
        raise UserError("no safetensors weights in the guard's directory", path=path)
    return path


def guard_sha256(directory: Path) -> str:
    """One sha256 over every safetensors file of the guard (a sharded guard has several)."""
    return sha256_json([[p.name, sha256_file(p)] for p in sorted(directory.glob("*.safetensors"))])


@cache
def load_guard(directory: str) -> tuple:
    """(tokenizer, model, (safe id, unsafe id)) of a local guard directory, in eval mode; cached per directory."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the guard's tokenizer has no chat template (a generative guard answers under its own "
                        "template)", path=Path(directory))
    answers = answer_tokens(tokenizer, Path(directory))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True, trust_remote_code=False).eval()
    return tokenizer, model, answers


def answer_tokens(tokenizer, path: Path) -> tuple[int, int]:
    """The first token of the answers "safe" and "unsafe" (with or without a leading space, as the vocabulary has
    them); a UserError when they are missing or begin alike."""
    for prefix in ("", " "):
        safe = tokenizer.encode(prefix + "safe", add_special_tokens=False)
        unsafe = tokenizer.encode(prefix + "unsafe", add_special_tokens=False)
        if safe and unsafe and safe[0] != unsafe[0] and tokenizer.unk_token_id not in (safe[0], unsafe[0]):
            return safe[0], unsafe[0]
    raise UserError('the guard\'s vocabulary has no distinct first tokens for the answers "safe" and "unsafe"',
                    path=path)


@register_feature
class GenerativeGuard(Feature):
    kind = "hf-guard"
    reads_text = True

    def __init__(self, path: str, directory: Path, sha256: str, max_tokens: int = MAX_TOKENS) -> None:
        self.path, self.directory, self.sha256, self.max_tokens = path, directory, sha256, max_tokens

    @torch.no_grad()
    def extract(self, inputs: GateInputs) -> torch.Tensor:
        tokenizer, model, (safe, unsafe) = load_guard(str(self.directory))
        texts, out = inputs.texts or [], []
        for start in range(0, len(texts), BATCH):
            rendered = [tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
                        for text in texts[start:start + BATCH]]
            enc = tokenizer(rendered, padding=True, truncation=True, max_length=self.max_tokens,
                            add_special_tokens=False, return_tensors="pt")
            logits = model(**enc).logits[:, -1].float().log_softmax(-1)
            out.append((logits[:, unsafe] - logits[:, safe]).unsqueeze(1))
        return torch.cat(out) if out else torch.zeros((0, 1))

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "sha256": self.sha256, "max_tokens": self.max_tokens}

    def describe(self) -> str:
        return f"the generative guard {self.path}"

    @classmethod
    def from_config(cls, config: dict[str, Any], path: Path, where: str) -> GenerativeGuard:
        directory, sha256 = pinned_directory(config, "path", guard_dir, path, where, guard_sha256)
        return cls(config["path"], directory, sha256, positive_int(config, "max_tokens", path, where))

    @classmethod
    def candidates(cls, argument: str | None, layers: list[int], poolings: list[str]) -> list[Feature]:
        if not argument:
            raise UserError("give the guard's directory: hf-guard:DIR", field="gate.features")
        directory = guard_dir(argument)
        load_guard(str(directory))  # its template and answer tokens are checked before any fitting
        return [cls(str(directory.resolve()), directory, guard_sha256(directory))]
