"""compare-domains on a tiny model: end to end, same budget for every domain, and no domain patch sees the
held-out questions it is evaluated on."""

import json

from orthopatch.data.assemble import training_records
from orthopatch.data.registry import normalise
from orthopatch.recipes.domains import DOMAIN_TEST, DOMAINS, DomainsConfig, held_out, run_domains
from orthopatch.train.config import LoraSettings


def test_domain_patches_never_train_on_their_held_out_questions():
    cfg = DomainsConfig()
    for domain in DOMAIN_TEST:
        records, _ = training_records(DOMAINS[domain], seed=0)
        trained = {normalise(r.prompt) for r in records}
        evaluated = {normalise(r.prompt) for r in held_out(domain, cfg)}
        assert evaluated and not trained & evaluated, domain


def test_compare_domains_end_to_end(tiny_model, tmp_path):
    cfg = DomainsConfig(model=str(tiny_model), output=str(tmp_path / "d"), max_examples=8, epochs=1, lr=5e-3,
                        lora=LoraSettings(r=2, alpha=4), n_harmful=2, n_benign=4, n_trivia=2, n_perplexity=2,
                        n_domain=3, n_prompts=2, max_new_tokens=3)
    record = run_domains(cfg, echo=lambda *_: None)
    out = tmp_path / "d"
    assert (out / "domains.png").stat().st_size > 0 and (out / "domains.csv").is_file()
    assert [row["domain"] for row in record["table"]] == ["safety", "knowledge", "technical"]
    assert {c["examples"] for c in record["budget"].values()} == {8}  # the same budget everywhere
    safety, knowledge, technical = record["table"]
    assert safety["overlap_with_safety_mso_input"] is None
    assert 0 <= knowledge["overlap_with_safety_mso_input"] <= 1 and technical["overlap_random_mso_input"] > 0
    assert knowledge["own_domain_nll_change"] == knowledge["knowledge_answer_nll_change"]
    assert safety["own_domain_nll_change"] is None
    for row in record["table"]:
        assert row["k=r/paper_similarity"] is not None and row["k=r/random_paper_similarity"] is not None
        assert row["hidden_shift_benign"] is not None and row["kl_to_base"] > 0
    saved = json.loads((out / "domains.json").read_text())
    assert saved["metrics"]["base"]["knowledge_answer_nll"] > 0
