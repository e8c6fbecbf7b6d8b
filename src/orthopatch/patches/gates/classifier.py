"""Feature kind ``hf-classifier``: a user's own guard model (a local transformers sequence-classification
directory, safetensors, no remote code) reads the prompt's text; the feature is its log-odds for the label that
means harmful (the one whose name says unsafe, harmful, jailbreak, injection or toxic; else the last). Alone it is a
guard behind the patch, thresholded on the validation prompts like any gate; beside other features, one more
input to the head."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from orthopatch.errors import UserError
from orthopatch.models.encoders import load_classifier, weights_sha256
from orthopatch.patches.gates.base import Feature, GateInputs
from orthopatch.patches.gates.local_model import pinned_directory, positive_int
from orthopatch.patches.gates.registry import register_feature

HARMFUL_LABEL = re.compile(r"unsafe|harm|jailbreak|injection|toxic|malicious", re.IGNORECASE)
MAX_TOKENS = 512
BATCH = 16


def classifier_dir(name: str) -> Path:
    path = Path(name)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise UserError("not a classifier directory: it needs config.json and model.safetensors", path=path)
    return path


def harmful_label(model) -> int:
    labels = getattr(model.config, "id2label", None) or {}
    named = [int(i) for i, name in labels.items() if HARMFUL_LABEL.search(str(name))]
    return named[0] if named else model.config.num_labels - 1


@register_feature
class GuardClassifier(Feature):
    kind = "hf-classifier"
    reads_text = True

    def __init__(self, path: str, directory: Path, sha256: str, label: int, max_tokens: int = MAX_TOKENS) -> None:
        self.path, self.directory, self.sha256, self.label, self.max_tokens = path, directory, sha256, label, \
            max_tokens

    @torch.no_grad()
    def extract(self, inputs: GateInputs) -> torch.Tensor:
        tokenizer, model = load_classifier(str(self.directory))
        texts, out = inputs.texts or [], []
        for start in range(0, len(texts), BATCH):
            enc = tokenizer(texts[start:start + BATCH], padding=True, truncation=True, max_length=self.max_tokens,
                            return_tensors="pt")
            logits = model(**enc).logits.float()
            if logits.shape[1] == 1:
                out.append(logits)
                continue
            others = torch.cat([logits[:, :self.label], logits[:, self.label + 1:]], dim=1)
            out.append((logits[:, self.label] - others.logsumexp(1)).unsqueeze(1))  # log-odds of the label
        return torch.cat(out) if out else torch.zeros((0, 1))

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "sha256": self.sha256, "label": self.label,
                "max_tokens": self.max_tokens}

    def describe(self) -> str:
        return f"the guard classifier {self.path} (label {self.label})"

    @classmethod
    def from_config(cls, config: dict[str, Any], path: Path, where: str) -> GuardClassifier:
        directory, sha256 = pinned_directory(config, "path", classifier_dir, path, where)
        label = config.get("label")
        if not isinstance(label, int) or isinstance(label, bool) or label < 0:
            raise UserError("must be a label index >= 0", path=path, field=where + "label")
        return cls(config["path"], directory, sha256, label, positive_int(config, "max_tokens", path, where))

    @classmethod
    def candidates(cls, argument: str | None, layers: list[int], poolings: list[str]) -> list[Feature]:
        if not argument:
            raise UserError("give the guard's directory: hf-classifier:DIR", field="gate.features")
        directory = classifier_dir(argument)
        label = harmful_label(load_classifier(str(directory))[1])
        return [cls(str(directory.resolve()), directory, weights_sha256(directory), label)]
