"""A gate: features read from a prompt (the base's hidden states, a sentence encoder, a user's guard classifier,
or several concatenated), a head fitted on them (linear or a small MLP) and a threshold on the head's logit.

On disk, inside the patch directory and hashed by its manifest: ``gate.json`` (features, head, threshold, how it
was fitted), ``gate.safetensors`` (the head's tensors) and, for a gate that reads text, ``gate_tokenizer.json`` (the
base's tokenizer, to turn the prompt's token ids back into its text). A gate of the first kind (one layer's hidden
states, a linear head) keeps the first format, so patches made before the other kinds load and hash as they did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from orthopatch.errors import UserError
from orthopatch.io import read_json, write_json_atomic
from orthopatch.models.generation import chat_prompt_ids
from orthopatch.patches.gates.registry import FEATURES, HEADS
from orthopatch.patches.gates.unformatted import ChatWrap

GATE_WEIGHTS = "gate.safetensors"
GATE_CONFIG = "gate.json"
GATE_TOKENIZER = "gate_tokenizer.json"
GATE_FORMAT = "orthopatch-gate/1"  # one layer's hidden states, linear head (the first kind)
GATE_FORMAT_2 = "orthopatch-gate/2"  # any features, any head
# "last+mean": both, concatenated (what the request ends on and what it holds throughout; a longer feature vector)
POOLINGS = ("last", "mean", "last+mean")
FIRST_KIND_POOLINGS = ("last", "mean")  # what a gate file of the first format may hold
SENTINEL = "\u2063orthopatch-prompt\u2063"


@dataclass
class GateInputs:
    """A batch of prompts as a gate sees them: left-padded token ids and the base's hidden states (batch, tokens,
    hidden) after each layer the gate reads."""

    input_ids: torch.Tensor
    attention: torch.Tensor
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    texts: list[str] | None = None  # the prompts' text, for features that read text (filled by the gate's reader)

    def rows(self, index: torch.Tensor) -> GateInputs:
        return GateInputs(self.input_ids[index], self.attention[index],
                          {k: v[index.to(v.device)] for k, v in self.hidden.items()},
                          None if self.texts is None else [self.texts[i] for i in index.tolist()])


def check_number(config: dict[str, Any], key: str, path: Path, where: str = "") -> float:
    value = config.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise UserError("must be a finite number", path=path, field=where + key)
    return float(value)


class Feature:
    """What a gate reads from a prompt: ``extract`` gives (batch, dims)."""

    kind: ClassVar[str]
    reads_text: ClassVar[bool] = False
    # a kind that learns is fitted on the gate's training prompts (``fitted``) and keeps its own files inside the
    # patch (``files``, written by ``save_files``, named in its config relative to the patch directory)
    learns: ClassVar[bool] = False
    files: ClassVar[tuple[str, ...]] = ()

    @property
    def layers(self) -> list[int]:
        return []  # hidden-state indices of the base this feature needs

    def fitted(self, texts: list[str], labels: torch.Tensor, seed: int, quick: bool = False) -> Feature:
        """A copy fitted on these prompts (1 = harmful); ``quick``: a cheaper fit for the refits of leaving one
        source out. Kinds that do not learn return themselves."""
        return self

    def save_files(self, directory: Path) -> None:
        """Write this feature's own files into the patch directory (kinds that learn)."""

    def extract(self, inputs: GateInputs) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any], path: Path, where: str) -> Feature:
        raise NotImplementedError

    @classmethod
    def candidates(cls, argument: str | None, layers: list[int], poolings: list[str]) -> list[Feature]:
        """The features of this kind a fit should try (``argument``: what follows ``kind:`` in the setting)."""
        raise NotImplementedError


class Head:
    """How features become one logit."""

    kind: ClassVar[str]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def fit(cls, X: torch.Tensor, y: torch.Tensor, l2: float, steps: int) -> Head:
        raise NotImplementedError

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> Head:
        raise NotImplementedError


def standardisation(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return X.mean(0).float(), X.std(0).clamp(min=1e-6).float()


def check_vectors(tensors: dict[str, torch.Tensor], keys: tuple[str, ...], path: Path) -> None:
    for key in keys:
        tensor = tensors.get(key)
        if tensor is None or not torch.isfinite(tensor).all():
            raise UserError("must hold finite values", path=path, field=key)


@dataclass
class PromptReader:
    """Turns a prompt's token ids back into the text its user wrote: decoded without special tokens, the chat
    template's text before and after the message removed (what remains of a raw text is the text itself)."""

    tokenizer: Tokenizer
    prefix: str
    suffix: str

    @classmethod
    def of(cls, hf_tokenizer) -> PromptReader:
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise UserError("a gate that reads text needs the base's fast (tokenizers) tokenizer, to store with it",
                            field="gate.features")
        tokenizer = Tokenizer.from_str(backend.to_str())
        rendered = tokenizer.decode(chat_prompt_ids(hf_tokenizer, [SENTINEL])[0], skip_special_tokens=True)
        prefix, _, suffix = rendered.partition(SENTINEL)
        return cls(tokenizer, prefix, suffix)

    def texts(self, input_ids: torch.Tensor, attention: torch.Tensor) -> list[str]:
        out = []
        for ids, mask in zip(input_ids.tolist(), attention.bool().tolist(), strict=True):
            text = self.tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m], skip_special_tokens=True)
            if self.prefix and text.startswith(self.prefix):
                text = text[len(self.prefix):]
            if self.suffix and text.endswith(self.suffix):
                text = text[:-len(self.suffix)]
            out.append(text)
        return out

    def save(self, directory: Path) -> dict[str, str]:
        self.tokenizer.save(str(directory / GATE_TOKENIZER))
        return {"tokenizer": GATE_TOKENIZER, "prefix": self.prefix, "suffix": self.suffix}

    @classmethod
    def load(cls, directory: Path, config: Any, path: Path) -> PromptReader:
        if not isinstance(config, dict) or not all(isinstance(config.get(k), str) for k in ("prefix", "suffix")):
            raise UserError("must give the chat template's prefix and suffix", path=path, field="reader")
        try:
            tokenizer = Tokenizer.from_file(str(directory / GATE_TOKENIZER))
        except Exception as error:  # the tokenizers library raises its own exception type for a malformed file
            raise UserError(f"not a readable tokenizer ({type(error).__name__})",
                            path=directory / GATE_TOKENIZER) from None
        return cls(tokenizer, config["prefix"], config["suffix"])


@dataclass
class Gate:
    """Features -> head -> a logit per prompt; at or above ``threshold`` the patch acts."""

    features: list[Feature]
    head: Head
    threshold: float
    info: dict[str, Any] = field(default_factory=dict)  # how it was fitted: data, selection, validation metrics
    reader: PromptReader | None = None  # needed when a feature reads text
    wrap: ChatWrap | None = None  # unformatted inputs read as a chat message (None: as they are)

    @property
    def layers(self) -> list[int]:
        """The base's hidden-state indices the gate reads (none for a gate on text alone)."""
        return sorted({layer for feature in self.features for layer in feature.layers})

    @property
    def layer(self) -> int:
        """The deepest of them (0: the gate runs no layer of the base)."""
        return max(self.layers, default=0)

    @property
    def reads_text(self) -> bool:
        return any(feature.reads_text for feature in self.features)

    def describe(self) -> str:
        return f"{self.head.kind} probe on " + " + ".join(f.describe() for f in self.features)

    def summary(self) -> dict[str, Any]:
        return {"features": [f.config() for f in self.features], "head": self.head.kind, "layers": self.layers,
                "threshold": self.threshold}

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The head's logits on already extracted (concatenated) features."""
        return self.head.logits(features)

    def extract(self, inputs: GateInputs) -> torch.Tensor:
        if self.reads_text and inputs.texts is None:
            if self.reader is None:
                raise UserError("this gate reads text but has no tokenizer to decode prompts with", field="reader")
            inputs.texts = self.reader.texts(inputs.input_ids, inputs.attention)
        return torch.cat([f.extract(inputs).float().cpu() for f in self.features], dim=1)

    def score(self, inputs: GateInputs) -> torch.Tensor:
        return self.logits(self.extract(inputs))

    def with_head(self, head: Head, threshold: float = 0.0) -> Gate:
        return Gate(self.features, head, threshold, {}, self.reader, self.wrap)

    def _first_kind(self) -> bool:
        from_first = len(self.features) == 1 and self.features[0].kind == "hidden" and \
            len(self.features[0].layers) == 1 and self.features[0].config().get("pooling") in FIRST_KIND_POOLINGS
        return from_first and self.head.kind == "linear" and self.reader is None

    def save(self, directory: Path) -> None:
        save_file({k: v.contiguous() for k, v in self.head.tensors().items()}, str(directory / GATE_WEIGHTS),
                  metadata={"format": "pt"})
        for feature in self.features:
            feature.save_files(directory)
        if self._first_kind():
            feature = self.features[0].config()
            config = {"format": GATE_FORMAT, "layer": feature["layers"][0], "pooling": feature["pooling"],
                      "threshold": self.threshold, **self.head.config()}
        else:
            config = {"format": GATE_FORMAT_2, "features": [f.config() for f in self.features],
                      "head": {"kind": self.head.kind, **self.head.config()}, "threshold": self.threshold}
            if self.reader is not None:
                config["reader"] = self.reader.save(directory)
        if self.wrap is not None:
            config["unformatted"] = self.wrap.config()
        write_json_atomic(directory / GATE_CONFIG, {**config, **self.info})

    @classmethod
    def load(cls, directory: str | Path) -> Gate:
        """Read and check a gate; anything malformed is a UserError naming the file and field."""
        directory = Path(directory)
        config_path, weights_path = directory / GATE_CONFIG, directory / GATE_WEIGHTS
        if not weights_path.is_file():
            raise UserError("missing: a gated patch needs its gate files", path=weights_path)
        config = read_json(config_path, "missing: a gated patch needs its gate files")
        if isinstance(config, dict) and config.get("format") == GATE_FORMAT:
            check_first_kind(config, config_path)
            config = {**config, "features": [{"kind": "hidden", "layers": [config["layer"]],
                                              "pooling": config["pooling"]}],
                      "head": {"kind": "linear", "bias": config["bias"]}}
        elif not isinstance(config, dict) or config.get("format") != GATE_FORMAT_2:
            raise UserError(f"unsupported gate format (expected {GATE_FORMAT} or {GATE_FORMAT_2})",
                            path=config_path, field="format")
        threshold = check_number(config, "threshold", config_path)
        features = read_features(config.get("features"), config_path)
        head_config = config.get("head")
        if not isinstance(head_config, dict) or head_config.get("kind") not in HEADS:
            raise UserError(f"must name a head kind ({', '.join(HEADS)})", path=config_path, field="head.kind")
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as error:
            raise UserError(f"not a readable safetensors file ({type(error).__name__})", path=weights_path) from None
        head = HEADS[head_config["kind"]].from_saved(head_config, tensors, weights_path)
        reader = PromptReader.load(directory, config.get("reader"), config_path) \
            if any(f.reads_text for f in features) else None
        wrap = ChatWrap.from_config(config["unformatted"], config_path) if "unformatted" in config else None
        known = ("format", "layer", "pooling", "threshold", "bias", "features", "head", "reader", "unformatted")
        return cls(features, head, threshold, {k: v for k, v in config.items() if k not in known}, reader, wrap)


def read_features(configs: Any, path: Path) -> list[Feature]:
    if not isinstance(configs, list) or not configs:
        raise UserError("must list the gate's features", path=path, field="features")
    features = []
    for index, config in enumerate(configs):
        where = f"features[{index}]."
        if not isinstance(config, dict) or config.get("kind") not in FEATURES:
            raise UserError(f"must name a feature kind ({', '.join(FEATURES)})", path=path, field=where + "kind")
        features.append(FEATURES[config["kind"]].from_config(config, path, where))
    return features


def check_first_kind(config: dict[str, Any], path: Path) -> None:
    layer = config.get("layer")
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 1:
        raise UserError("must be a layer index >= 1", path=path, field="layer")
    if config.get("pooling") not in FIRST_KIND_POOLINGS:
        raise UserError(f"must be one of {', '.join(FIRST_KIND_POOLINGS)}", path=path, field="pooling")
    for key in ("threshold", "bias"):
        check_number(config, key, path)
