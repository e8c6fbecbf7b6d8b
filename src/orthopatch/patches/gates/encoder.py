"""Feature kind ``encoder``: a sentence encoder's mean-pooled, unit-norm embedding of the prompt's text (the
user's message, without the chat template). ``encoder`` is all-MiniLM-L6-v2 from the assets; ``encoder:DIR`` any
BERT-style encoder directory. It reads meaning from another model than the one being patched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from orthopatch.models.encoders import MINILM, encoder_dir, mean_embeddings, weights_sha256
from orthopatch.patches.gates.base import Feature, GateInputs
from orthopatch.patches.gates.local_model import pinned_directory, positive_int
from orthopatch.patches.gates.registry import register_feature

MAX_TOKENS = 256  # all-MiniLM-L6-v2's training length; a longer prompt keeps its end


@register_feature
class SentenceEncoder(Feature):
    kind = "encoder"
    reads_text = True

    def __init__(self, model: str, directory: Path, sha256: str, max_tokens: int = MAX_TOKENS) -> None:
        self.model, self.directory, self.sha256, self.max_tokens = model, directory, sha256, max_tokens

    def extract(self, inputs: GateInputs) -> torch.Tensor:
        return mean_embeddings(inputs.texts or [], self.directory, self.max_tokens, keep_end=True).float()

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "sha256": self.sha256, "max_tokens": self.max_tokens}

    def describe(self) -> str:
        return f"{Path(self.model).name} sentence embeddings"

    @classmethod
    def from_config(cls, config: dict[str, Any], path: Path, where: str) -> SentenceEncoder:
        directory, sha256 = pinned_directory(config, "model", encoder_dir, path, where)
        return cls(config["model"], directory, sha256, positive_int(config, "max_tokens", path, where))

    @classmethod
    def candidates(cls, argument: str | None, layers: list[int], poolings: list[str]) -> list[Feature]:
        directory = encoder_dir(argument or MINILM)
        model = MINILM if argument in (None, MINILM) else str(directory.resolve())
        return [cls(model, directory, weights_sha256(directory))]
