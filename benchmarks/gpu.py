"""Benchmark: orthopatch at a named model shape on whatever device is there (a GPU where one is lent; the CPU with
the tiny shape in the test run). A randomly initialised Llama-architecture model of the shape, with the embedded
SmolLM2 tokenizer (no weights travel), saved as safetensors and loaded as a user's model would be. Side by side in one
run: orthopatch's LoRA loop vs PEFT + the HF Trainer (tokens/s and model FLOPs utilisation), orthopatch's full
fine-tune vs its LoRA (time, peak memory), and evaluation generation vs plain batched ``generate`` (prompts/s).

    python benchmarks/gpu.py --shape 1.7b                 # on a GPU: bf16 weights, bf16 autocast
    python benchmarks/gpu.py --shape tiny --examples 4    # the CPU smoke test

Model FLOPs per trained token: 6N for full fine-tuning (forward, input and weight gradients), 4N for LoRA (the
frozen weights get no gradient), N the non-embedding parameters plus the output head; attention's own FLOPs are
left out (short sequences). MFU = model FLOPs/s over the device's peak (bf16 dense: H100/H200 989 TFLOP/s, A100 312;
``--peak-tflops`` for others; none on a CPU unless given).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_throughput import plain  # noqa: E402  (a sibling script's route)
from train_throughput import hf_trainer_route, orthopatch_route  # noqa: E402

SHAPES = {  # hidden, layers, heads, kv heads, intermediate (vocabulary: the embedded tokenizer's)
    "tiny": (64, 2, 4, 2, 128),
    "135m": (576, 30, 9, 3, 1536),
    "1.7b": (2048, 24, 32, 32, 8192),
    "8b": (4096, 32, 32, 8, 14336),
}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def random_model_dir(shape: str, directory: Path, dtype: torch.dtype) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from orthopatch.models.embedded import embedded_model_dir
    from orthopatch.models.loading import load_tokenizer

    hidden, layers, heads, kv, intermediate = SHAPES[shape]
    tokenizer = load_tokenizer(embedded_model_dir())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=intermediate,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def model_flops_per_token(model, lora: bool) -> float:
    embedding = model.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in model.parameters()) - embedding + model.get_output_embeddings().weight.numel()
    return (4 if lora else 6) * n


def peak_flops(device: str, given: float | None) -> float | None:
    if given:
        return given * 1e12
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)
    return None


def training_routes(model, tokenizer, info, cfg, examples, with_full: bool) -> dict:
    from orthopatch.train.cost import peak_memory_mb, reset_peak_memory

    device = str(model.device)
    routes = {"orthopatch_lora": lambda: orthopatch_route(model, tokenizer, info, cfg, "lora-sft"),
              "hf_trainer_lora": lambda: hf_trainer_route(model, tokenizer, examples, cfg,
                                                          bf16=device.startswith("cuda"))}
    if with_full:
        routes["orthopatch_full"] = lambda: orthopatch_route(model, tokenizer, info, cfg, "full-sft")
    out = {}
    for name, route in routes.items():
        reset_peak_memory(device)
        out[name] = {**route(), "peak_memory_mb": round(peak_memory_mb(device), 1)}
    return out


def eval_routes(model, tokenizer, n: int, max_new_tokens: int) -> dict:
    from orthopatch.data.registry import load_dataset
    from orthopatch.data.splits import get_split
    from orthopatch.models.generation import generate

    prompts = [r.prompt for r in get_split(load_dataset("rho_overrefusal"), "test")
               + get_split(load_dataset("chatterbot_prompts"), "validation")][:n]
    start = time.perf_counter()
    slow = plain(model, tokenizer, prompts, max_new_tokens, 16)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    fast = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=64, token_budget=None,
                    share_prefix=True)
    ours_s = time.perf_counter() - start
    return {"prompts": len(prompts), "plain_prompts_per_s": round(len(prompts) / plain_s, 3),
            "orthopatch_prompts_per_s": round(len(prompts) / ours_s, 3), "speedup": round(plain_s / ours_s, 3),
            "identical_answers": sum(a == b for a, b in zip(slow, fast, strict=True))}


def main() -> None:
    from orthopatch.data.assemble import training_records
    from orthopatch.models.loading import load_model
    from orthopatch.train.config import TrainConfig
    from orthopatch.train.tokenize import tokenize_chat

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.7b")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--n", type=int, default=64, help="prompts for the generation comparison")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--no-full", action="store_true", help="skip full fine-tuning (memory)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        path = random_model_dir(args.shape, Path(tmp) / args.shape, torch.bfloat16 if cuda else torch.float32)
        model, tokenizer, info = load_model(str(path), device="auto")
        cfg = TrainConfig(model=str(path), data=["advbench"], max_examples=args.examples, epochs=1, device="auto")
        records, _ = training_records(cfg.data, seed=cfg.seed, max_examples=cfg.max_examples)
        examples = [tokenize_chat(tokenizer, r.chat(), cfg.max_length, r.id, None) for r in records]
        warm = TrainConfig(model=str(path), data=["advbench"], max_examples=8, epochs=1, device="auto")
        orthopatch_route(model, tokenizer, info, warm, "lora-sft")  # untimed warm-up (kernels, allocator)
        train = training_routes(model, tokenizer, info, cfg, examples, not args.no_full)
        generation = eval_routes(model, tokenizer, args.n, args.max_new_tokens)
    device = str(model.device)
    peak = peak_flops(device, args.peak_tflops)
    for name, row in train.items():
        flops = model_flops_per_token(model, lora="lora" in name) * row["tokens_per_second"]
        row["model_tflops_per_s"] = round(flops / 1e12, 3)
        row["mfu"] = round(flops / peak, 4) if peak else None
    ours, theirs = train["orthopatch_lora"], train["hf_trainer_lora"]
    result = {"shape": args.shape, "device": device, "device_name": torch.cuda.get_device_name() if cuda else "cpu",
              "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
              "parameters": sum(p.numel() for p in model.parameters()), "examples": len(examples), "train": train,
              "ratios": {"orthopatch_vs_hf_trainer_tokens_per_second":
                         round(ours["tokens_per_second"] / theirs["tokens_per_second"], 3)},
              "eval": generation, "peak_tflops": peak / 1e12 if peak else None,
              "threads": torch.get_num_threads()}
    if "orthopatch_full" in train:
        full = train["orthopatch_full"]
        result["ratios"].update({"full_vs_lora_seconds": round(full["seconds"] / ours["seconds"], 3),
                                 "full_vs_lora_peak_memory": round(full["peak_memory_mb"] / ours["peak_memory_mb"],
                                                                   3)})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
