"""Benchmark: orthopatch's training loop against plain PEFT + the Hugging Face Trainer on identical work, and LoRA
against full-parameter training, side by side in one process (ratios, not absolute numbers).

    python benchmarks/train_throughput.py                       # embedded SmolLM2-135M, 64 AdvBench examples
    python benchmarks/train_throughput.py --model DIR --examples 256

Identical work: the same tokenized examples (assistant-only labels), batch size, learning rate, optimizer (AdamW),
constant schedule, epochs and LoRA config; each route trains once after a short untimed warm-up of its own, then the
routes run in turn for ``--repeats`` rounds and each reports its median round. Reported:
tokens/s (non-padding tokens processed), wall time and peak resident memory of each route (the high-water mark is reset
before each route, as orthopatch does per training run), the ratios, and the final losses (they should be close: same
data and hyper-parameters).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time

import torch


def hf_trainer_route(model, tokenizer, examples, cfg, bf16: bool = False) -> dict:
    from peft import get_peft_model
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from orthopatch.train.adapters import lora_config
    from orthopatch.train.tokenize import pad_batch

    peft_model = get_peft_model(copy.deepcopy(model), lora_config(cfg))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
                                 num_train_epochs=cfg.epochs, lr_scheduler_type="constant", weight_decay=0.0,
                                 max_grad_norm=cfg.max_grad_norm, logging_steps=1, save_strategy="no", report_to=[],
                                 use_cpu=str(model.device) == "cpu", seed=cfg.seed, dataloader_num_workers=0,
                                 remove_unused_columns=False, disable_tqdm=True, bf16=bf16)
        trainer = Trainer(model=peft_model, args=args, train_dataset=examples,
                          data_collator=lambda batch: pad_batch(batch, tokenizer.pad_token_id))
        trainer.remove_callback(PrinterCallback)  # it prints every log line; stdout carries the JSON result only
        start = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = cfg.epochs * sum(len(e.input_ids) for e in examples)
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_second": round(tokens / seconds, 1),
            "final_loss": round(losses[-1], 4) if losses else result.training_loss}


def orthopatch_route(model, tokenizer, info, cfg, method: str) -> dict:
    from orthopatch.train.run import train_patch

    with tempfile.TemporaryDirectory() as out:
        run = copy.deepcopy(cfg)
        run.output, run.method, run.checkpoint_every = f"{out}/patch", method, 0
        if method == "full-sft":
            run.lr = 2e-5
        patch = train_patch(run, progress=False, model_and_tokenizer=(model, tokenizer, info))
        manifest = json.loads((patch / "orthopatch.json").read_text())
    cost = manifest["cost"]
    return {"seconds": cost["wall_seconds"], "tokens": cost["tokens_trained"],
            "tokens_per_second": cost["tokens_per_second"], "final_loss": manifest["final_loss"],
            "trainable_parameters": cost["trainable_parameters"], "packed": cost["packed"]}


def median_run(rows: list[dict]) -> dict:
    """The round with the median time (its loss and memory with it)."""
    return sorted(rows, key=lambda row: row["seconds"])[len(rows) // 2]


def main() -> None:
    from orthopatch.data.assemble import training_records
    from orthopatch.models.loading import load_model
    from orthopatch.train.config import TrainConfig
    from orthopatch.train.cost import peak_memory_mb, reset_peak_memory
    from orthopatch.train.tokenize import tokenize_chat

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all routes; each reports its median")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = TrainConfig(model=args.model, data=["advbench"], max_examples=args.examples, epochs=args.epochs,
                      device="auto")
    model, tokenizer, info = load_model(args.model)
    records, _ = training_records(cfg.data, seed=cfg.seed, max_examples=cfg.max_examples)
    examples = [tokenize_chat(tokenizer, r.chat(), cfg.max_length, r.id, None) for r in records]

    # Untimed warm-up of both LoRA routes on a few examples (first-call costs: kernels, allocator, imports).
    warm = copy.deepcopy(cfg)
    warm.max_examples = 8
    orthopatch_route(model, tokenizer, info, warm, "lora-sft")
    hf_trainer_route(model, tokenizer, examples[:8], cfg)
    routes = {"orthopatch_lora": lambda: orthopatch_route(model, tokenizer, info, cfg, "lora-sft"),
              "hf_trainer_lora": lambda: hf_trainer_route(model, tokenizer, examples, cfg),
              "orthopatch_full": lambda: orthopatch_route(model, tokenizer, info, cfg, "full-sft")}
    runs: dict[str, list[dict]] = {name: [] for name in routes}
    for _ in range(args.repeats):  # rounds of every route in turn: the machine's drift hits all of them alike
        for name, route in routes.items():
            reset_peak_memory(str(model.device))
            runs[name].append({**route(), "peak_memory_mb": round(peak_memory_mb(str(model.device)), 1)})
    results = {name: {**median_run(rows), "seconds_per_round": [row["seconds"] for row in rows]}
               for name, rows in runs.items()}
    ours, theirs, full = results["orthopatch_lora"], results["hf_trainer_lora"], results["orthopatch_full"]
    results["ratios"] = {
        "orthopatch_vs_hf_trainer_tokens_per_second": round(ours["tokens_per_second"] / theirs["tokens_per_second"],
                                                            3),
        "full_vs_lora_seconds": round(full["seconds"] / ours["seconds"], 3),
        "full_vs_lora_trainable_parameters": round(full["trainable_parameters"] / ours["trainable_parameters"], 1),
        "full_vs_lora_peak_memory": round(full["peak_memory_mb"] / ours["peak_memory_mb"], 3),
    }
    results["setup"] = {"model": info.spec, "examples": len(examples), "epochs": cfg.epochs,
                        "batch_size": cfg.batch_size, "lr": cfg.lr, "lora_r": cfg.lora.r,
                        "threads": torch.get_num_threads(),
                        "note": "peak memory is the process's resident high-water mark during the route (model "
                                "included); on CUDA, peak allocated memory"}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
