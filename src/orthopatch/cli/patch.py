"""``orthopatch patch``: apply (stack), merge, export, info, verify, diff."""

from __future__ import annotations

import argparse
import json

from orthopatch.cli.common import add_verbose


def register(sub) -> None:
    pt = sub.add_parser("patch", help="stack, merge, export, inspect, verify and compare patches",
                        description="Manage patches. PATCH@SCALE gives a patch a scale (default 1).")
    psub = pt.add_subparsers(dest="patch_command", required=True)
    for name, text, run in (
            ("apply", "stack patches (each with a scale) into one patch: W0 + sum of scale x update", run_apply),
            ("merge", "bake patches into a standalone model directory (plain transformers / vLLM)", run_merge)):
        cmd = psub.add_parser(name, help=text, description=text)
        cmd.add_argument("patches", nargs="+", metavar="PATCH[@SCALE]")
        cmd.add_argument("--model", help="the base (default: the embedded SmolLM2-135M); patches must fit it")
        cmd.add_argument("--output", required=True)
        cmd.add_argument("--overwrite", action="store_true")
        cmd.add_argument("--allow-base-mismatch", action="store_true",
                         help="accept patches made for another base (recorded in the output manifest)")
        if name == "merge":
            cmd.add_argument("--unconditional", action="store_true",
                             help="merge a gated patch's LoRA part as if its gate were always on (the gate is lost)")
        add_verbose(cmd)
        cmd.set_defaults(run=run)
    exp = psub.add_parser("export", help="copy a verified patch with a model card, ready to share, or write its "
                                         "LoRA part as a GGUF adapter for llama.cpp and Ollama (--format gguf)")
    exp.add_argument("patch")
    exp.add_argument("--output", required=True)
    exp.add_argument("--overwrite", action="store_true")
    exp.add_argument("--format", choices=("peft", "gguf"), default="peft",
                     help="peft: the patch as it is (default); gguf: adapter.gguf, a Modelfile and a README")
    exp.add_argument("--model", help="gguf: the base the patch must fit (default: the embedded SmolLM2-135M)")
    exp.add_argument("--base-gguf", metavar="FILE",
                     help="gguf: the base's GGUF file (default: the embedded model's own)")
    exp.set_defaults(run=run_export)
    info = psub.add_parser("info", help="what a patch is: base, method, config, data, cost, files")
    info.add_argument("patch")
    info.add_argument("--json", action="store_true", help="print the whole manifest")
    info.set_defaults(run=run_info)
    ver = psub.add_parser("verify", help="check a patch's file hashes (and, with --model, its base)")
    ver.add_argument("patch")
    ver.add_argument("--model", help="the base it must fit (default: only the hashes are checked)")
    ver.set_defaults(run=run_verify)
    dif = psub.add_parser("diff", help="subspace overlap between patches (0 = orthogonal)")
    dif.add_argument("patches", nargs="+")
    dif.add_argument("--model", help="the base (default: the embedded SmolLM2-135M)")
    dif.add_argument("--labels", nargs="+")
    dif.set_defaults(run=run_diff)
    for cmd in (exp, info, ver, dif):
        add_verbose(cmd)


def _specs(args: argparse.Namespace) -> list[tuple[str, float]]:
    from orthopatch.patches.stack import parse_patch_spec

    return [parse_patch_spec(spec) for spec in args.patches]


def run_apply(args: argparse.Namespace, command: str) -> int:
    patches = _specs(args)
    from orthopatch.models.loading import fingerprint, resolve_model_path
    from orthopatch.patches.stack import stack_adapters

    path = stack_adapters(patches, args.output, base_fingerprint=fingerprint(resolve_model_path(args.model)[1]),
                          allow_base_mismatch=args.allow_base_mismatch, overwrite=args.overwrite, command=command)
    print(f"stacked patch written to {path}")
    return 0


def run_merge(args: argparse.Namespace, command: str) -> int:
    patches = _specs(args)
    from orthopatch.patches.stack import merge_patches

    path = merge_patches(patches, args.output, model=args.model, allow_base_mismatch=args.allow_base_mismatch,
                         overwrite=args.overwrite, command=command, unconditional=args.unconditional)
    print(f"merged model written to {path}")
    return 0


def run_export(args: argparse.Namespace, command: str) -> int:
    if args.format == "gguf":
        from orthopatch.patches.gguf import UNGATED_WARNING, export_gguf

        path = export_gguf(args.patch, args.output, model=args.model, base_gguf=args.base_gguf,
                           overwrite=args.overwrite)
        print(f"exported the LoRA part to {path}/adapter.gguf (with a Modelfile)")
        print(f"warning: {UNGATED_WARNING}")
        return 0
    if args.model or args.base_gguf:
        from orthopatch.errors import UserError

        raise UserError("--model and --base-gguf go with --format gguf", field="--format")
    from orthopatch.patches.stack import export_patch

    print(f"exported to {export_patch(args.patch, args.output, overwrite=args.overwrite)}")
    return 0


def run_info(args: argparse.Namespace, command: str) -> int:
    from orthopatch.patches.manifest import describe_patch, read_manifest

    manifest = read_manifest(args.patch)
    print(json.dumps(manifest, indent=2) if args.json else describe_patch(args.patch, manifest))
    return 0


def run_verify(args: argparse.Namespace, command: str) -> int:
    from orthopatch.models.loading import fingerprint, resolve_model_path
    from orthopatch.patches.manifest import verify_patch

    fp = fingerprint(resolve_model_path(args.model)[1]) if args.model else None
    manifest = verify_patch(args.patch, fp)
    print(f"ok: {len(manifest['files'])} files match their sha256"
          + (f"; made for this base ({fp[:12]})" if fp else "; base not checked (give --model)"))
    return 0


def run_diff(args: argparse.Namespace, command: str) -> int:
    from orthopatch.patches.stack import diff_patches

    overlap = diff_patches(args.patches, model=args.model, labels=args.labels)
    for pair, row in overlap.items():
        print(f"{pair}: MSO input {row['mso_input']:.4f} (random {row['random_mso_input']:.4f}), output "
              f"{row['mso_output']:.4f} (random {row['random_mso_output']:.4f}); largest cosine input "
              f"{row['max_cosine_input']:.3f}, output {row['max_cosine_output']:.3f}; {row['n_modules']} shared "
              "modules")
    return 0
