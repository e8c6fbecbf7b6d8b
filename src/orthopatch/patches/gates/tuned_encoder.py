"""Feature kind ``tuned-encoder``: a sentence encoder fine-tuned end to end as a harmful / benign classifier on the
gate's own training prompts; the feature is its logit.

A frozen encoder with a linear head reads what a text is about; fine-tuning the encoder lets it read what a text
asks for, which is what tells a request from its benign twin (guard models are trained this way). It starts from
all-MiniLM-L6-v2 (``tuned-encoder``) or a BERT-style directory (``tuned-encoder:DIR``), trains a few epochs on the
CPU (class-balanced logistic loss, AdamW, a fixed seed) and is saved inside the patch, flat beside ``gate.json``:
its weights and the linear layer on the mean-pooled embedding (``gate_encoder.safetensors``), the encoder's
configuration (``gate_encoder.json``) and tokenizer (``gate_encoder_tokenizer.json``), each hashed by the manifest
and copied by ``patch export``; ``gate.json`` names them relative to the patch and pins the weights by sha256.
Leaving a source out refits it without that source (fewer steps), so its out-of-source error is measured, not
assumed.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save, save_file
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModel

from orthopatch.errors import UserError
from orthopatch.io import sha256_file, write_json_atomic
from orthopatch.models.encoders import MINILM, encoder_dir
from orthopatch.patches.gates.base import Feature, GateInputs
from orthopatch.patches.gates.local_model import positive_int
from orthopatch.patches.gates.registry import register_feature

WEIGHTS, CONFIG, TOKENIZER = "gate_encoder.safetensors", "gate_encoder.json", "gate_encoder_tokenizer.json"
MAX_TOKENS = 96  # a longer prompt keeps its end, where the request usually is
EPOCHS, BATCH, LR = 2, 32, 5e-5
MIN_STEPS = 40  # a small data set still gets this many updates
# the word embeddings and the lowest layers stay as they are: they read words, which the pretrained encoder does
# well, and holding them costs a third of a step's time on a CPU (measured: 0.31 s instead of 0.8 s, batch 32)
FROZEN_LAYERS = 2
POOL = 8  # batches drawn at random, then cut from this many batches' worth of rows sorted by length (less padding)


class _Classifier(torch.nn.Module):
    """The encoder, mean pooling over real tokens, one linear layer: the logit of "harmful"."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.config.hidden_size, 1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)).squeeze(-1)


def _tokenizer(tokenizer: Tokenizer, max_tokens: int) -> Tokenizer:
    tokenizer.enable_truncation(max_tokens, direction="left")
    pad = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")
    return tokenizer


def _batch(tokenizer: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = tokenizer.encode_batch([str(t) for t in texts])
    return (torch.tensor([e.ids for e in encoded]), torch.tensor([e.attention_mask for e in encoded]))


def train_classifier(model: _Classifier, tokenizer: Tokenizer, texts: list[str], labels: torch.Tensor, seed: int,
                     epochs: int = EPOCHS, min_steps: int = MIN_STEPS) -> _Classifier:
    """Fine-tune ``model`` in place: class-balanced logistic loss, AdamW, batches in a seeded order; at least
    ``MIN_STEPS`` updates."""
    generator = torch.Generator().manual_seed(seed)
    positive = float(labels.sum())
    weight = torch.tensor((len(labels) - positive) / max(positive, 1.0))
    layers = list(getattr(getattr(model.encoder, "encoder", None), "layer", []))  # BERT-style layout
    for module in [getattr(model.encoder, "embeddings", None), *layers[:FROZEN_LAYERS]]:
        if module is not None:
            module.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.01)
    model.train()
    steps_per_epoch = math.ceil(len(texts) / BATCH)
    for _ in range(max(epochs, math.ceil(min_steps / steps_per_epoch))):
        for chunk in _length_batches(texts, torch.randperm(len(texts), generator=generator).tolist(), generator):
            ids, mask = _batch(tokenizer, [texts[i] for i in chunk])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(ids, mask), labels[chunk].float(),
                                                                        pos_weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def _length_batches(texts: list[str], order: list[int], generator: torch.Generator) -> list[list[int]]:
    """Batches of similar lengths: the seeded order cut into pools, each sorted by length and cut into batches,
    the batches then shuffled."""
    batches = []
    for start in range(0, len(order), BATCH * POOL):
        pool = sorted(order[start:start + BATCH * POOL], key=lambda i: len(texts[i]))
        batches += [pool[k:k + BATCH] for k in range(0, len(pool), BATCH)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _tensors(model: _Classifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


@register_feature
class TunedEncoder(Feature):
    kind = "tuned-encoder"
    reads_text = True
    learns = True
    files: ClassVar[tuple[str, ...]] = (WEIGHTS, CONFIG, TOKENIZER)

    def __init__(self, start: str, directory: Path, model: _Classifier | None = None,
                 tokenizer: Tokenizer | None = None, max_tokens: int = MAX_TOKENS, sha256: str | None = None) -> None:
        self.start, self.directory, self.model, self.max_tokens, self.sha256 = start, directory, model, max_tokens, \
            sha256
        self.tokenizer = tokenizer

    def fitted(self, texts: list[str], labels: torch.Tensor, seed: int, quick: bool = False) -> TunedEncoder:
        """A copy fine-tuned on ``texts`` (``quick``: one epoch, for the refits of leaving one source out)."""
        tokenizer = _tokenizer(Tokenizer.from_file(str(self.directory / "tokenizer.json")), self.max_tokens)
        torch.manual_seed(seed)
        encoder = AutoModel.from_pretrained(str(self.directory), use_safetensors=True, trust_remote_code=False)
        model = train_classifier(_Classifier(encoder), tokenizer, texts, labels, seed, *((1, MIN_STEPS // 4) if quick
                                                                                        else (EPOCHS, MIN_STEPS)))
        return TunedEncoder(self.start, self.directory, model, tokenizer, self.max_tokens,
                            _state_sha256(model))

    @torch.no_grad()
    def extract(self, inputs: GateInputs) -> torch.Tensor:
        if self.model is None:
            raise UserError("a tuned-encoder feature must be fitted before it reads prompts", field="gate.features")
        texts, out = inputs.texts or [], []
        for start in range(0, len(texts), BATCH):
            out.append(self.model(*_batch(self.tokenizer, texts[start:start + BATCH])).float())
        return torch.cat(out).unsqueeze(1) if out else torch.zeros((0, 1))

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "max_tokens": self.max_tokens, "weights": WEIGHTS,
                "config": CONFIG, "tokenizer": TOKENIZER, "sha256": self.sha256}

    def describe(self) -> str:
        return f"{Path(self.start).name} fine-tuned as a classifier"

    def save_files(self, directory: Path) -> None:
        if self.model is None:
            raise UserError("a tuned-encoder feature must be fitted before it is saved", field="gate.features")
        save_file(_tensors(self.model), str(directory / WEIGHTS), metadata={"format": "pt"})
        write_json_atomic(directory / CONFIG, self.model.encoder.config.to_dict())
        self.tokenizer.save(str(directory / TOKENIZER))

    @classmethod
    def from_config(cls, config: dict[str, Any], path: Path, where: str) -> TunedEncoder:
        directory = path.parent
        for key, name in (("weights", WEIGHTS), ("config", CONFIG), ("tokenizer", TOKENIZER)):
            if config.get(key) != name or not (directory / name).is_file():
                raise UserError(f"must name {name}, a file beside gate.json", path=path, field=where + key)
        if not isinstance(config.get("sha256"), str) or sha256_file(directory / WEIGHTS) != config["sha256"]:
            raise UserError(f"{WEIGHTS} does not match the sha256 this gate was fitted with", path=path,
                            field=where + "sha256")
        max_tokens = positive_int(config, "max_tokens", path, where)
        model = _load_classifier(directory, path, where)
        tokenizer = _tokenizer(Tokenizer.from_file(str(directory / TOKENIZER)), max_tokens)
        return cls(str(config.get("start", "")), directory, model, tokenizer, max_tokens, config["sha256"])

    @classmethod
    def candidates(cls, argument: str | None, layers: list[int], poolings: list[str]) -> list[Feature]:
        directory = encoder_dir(argument or MINILM)
        if not (directory / "tokenizer.json").is_file():
            raise UserError("a tuned encoder needs its fast tokenizer (tokenizer.json)", path=directory)
        return [cls(MINILM if argument in (None, MINILM) else str(directory.resolve()), directory)]


def _state_sha256(model: _Classifier) -> str:
    """The sha256 the saved weights file will have (safetensors writes the same bytes for the same tensors)."""
    return hashlib.sha256(save(_tensors(model), metadata={"format": "pt"})).hexdigest()


def _load_classifier(directory: Path, path: Path, where: str) -> _Classifier:
    try:
        settings = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
        encoder = AutoModel.from_config(AutoConfig.for_model(**settings))
        model = _Classifier(encoder)
        model.load_state_dict(load_file(str(directory / WEIGHTS)), strict=True)
    except (ValueError, KeyError, RuntimeError, OSError, TypeError) as error:
        raise UserError(f"not a tuned encoder this version can read ({type(error).__name__})", path=path,
                        field=where + "weights") from None
    if not all(math.isfinite(float(p.abs().sum())) for p in model.parameters()):
        raise UserError("the tuned encoder's weights must be finite", path=path, field=where + "weights")
    return model.eval()
