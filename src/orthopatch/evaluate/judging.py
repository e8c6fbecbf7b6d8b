"""A judge by name (:mod:`.judges` lists the names and checks them without loading anything): the string judges, the
embedding judge (fitted on first use) and the model-slot judges (loaded on first use)."""

from __future__ import annotations

from dataclasses import replace
from functools import cache

from orthopatch.evaluate.embedding_judge import EmbeddingJudge
from orthopatch.evaluate.judges import STRING_JUDGES, Judge, check_judge_name
from orthopatch.evaluate.model_judges import ClassifierJudge, GuardJudge


@cache
def get_judge(name: str) -> Judge:
    check_judge_name(name)
    base, _, option = name.partition(":")
    if base in STRING_JUDGES:
        judge = STRING_JUDGES[base]
        return replace(judge, name=name, mode=option) if option else judge
    if name == "embed-minilm":
        return EmbeddingJudge.fitted()

    return (ClassifierJudge if base == "hf-classifier" else GuardJudge).load(option)
