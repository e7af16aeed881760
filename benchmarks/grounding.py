"""Grounding by generation: a decoder VLM answers "locate <referring expression>" and
"detect <label>" with location tokens (`vlmoe.tasks.grounding`); scored by accuracy@IoU0.5 of
the first generated box over every referring expression of held-out scenes.

Scenes as in `benchmarks/detection.py` (1-6 objects, occlusion up to 30%, 64x64). The decoder is
a `decoder-small` preset (ViT encoder, MLP projector, causal LM; `-moe`: E=8 top-2 in every
other LM block) with a BPE tokenizer trained on the scenes' texts plus the location tokens.
Training draws (image, prompt) examples; images are flipped at random with left/right swapped
in the texts and the boxes mirrored.

The defaults are the recipe (README, "Detection and grounding"), in two stages:

1. the `det-small` detector, by its recipe on the same scenes (`benchmarks/detection.py`;
   saved under `--work`, reused when there);
2. the decoder with its vision tower started from that detector's backbone (`--vision-from`),
   fixed 2-D grid positions added to the image tokens (`--image-positions sincos`: the
   detector's features hold where a patch is only weakly), the prompt before the image
   (image tokens see the expression; `--image-first` for the other order), 32 location bins
   (`--bins`, saved with the tokenizer), a Gaussian target over neighbouring bins
   (`--loc-sigma`) and location embeddings started from their bin's sine-cosine encoding
   (`--loc-init`).

    OMP_NUM_THREADS=1 python benchmarks/grounding.py
    OMP_NUM_THREADS=1 python benchmarks/grounding.py --vision-from scratch --bins 0 \
        --loc-sigma 0 --loc-init random --image-positions none --image-first \
        --set vision.patch_embed=conv --steps 1500         # the earlier baseline

After training, every wrong answer is sorted into: no box in the answer, a box off every
object, the wrong object (the predicted box overlaps another object of the scene more than the
referred one), or the right object but too imprecise (0 < IoU < 0.5 with it); accuracy is also
broken down by kind of expression. `--freeze vision` trains the rest only
(`vlmoe.models.freeze`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import detection  # benchmarks/detection.py: stage 1 of the recipe
import torch

from vlmoe.config import parse_override
from vlmoe.data.locations import text_to_boxes
from vlmoe.data.shapes import ShapesConfig
from vlmoe.data.shapes_data import ShapesDataset
from vlmoe.data.tokenizer import Tokenizer
from vlmoe.data.transforms import ImageTransform
from vlmoe.eval.runner import run_evaluators
from vlmoe.models.checkpoint import load_model
from vlmoe.models.freeze import freeze
from vlmoe.models.registry import create_model
from vlmoe.nn.boxes import box_iou
from vlmoe.tasks import TaskDataset, TaskInfo, eval_loader
from vlmoe.tasks.grounding import Grounding, GroundingConfig, init_location_embeddings
from vlmoe.train.checkpoint import checkpoint_dirs, write_json_atomic
from vlmoe.train.config import OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from vlmoe.train.trainer import Trainer

DET_RECIPE = detection.RECIPE

# The scenes of benchmarks/detection.py.
SCENES = ShapesConfig(
    image_size=64, min_objects=1, max_objects=6, occlusion=0.3, large_objects="any", seed=0
)
MAX_LEN = 40
# The detector's backbone fields a decoder's vision tower takes over with `--vision-from`.
VISION_FIELDS = ("image_size", "patch_size", "patch_embed", "stem_channels", "pool", "pos_embed")


def ref_kind(text: str) -> str:
    """The kind of a scene-world referring expression (`vlmoe.data.grammar.make_refs`)."""
    if text.startswith("the object "):
        return "relation"  # "the object left of the red circle"
    if text == "the largest object":
        return "largest"
    if text.endswith(" object"):
        return "colour"  # "the (small) red object"
    if any(c in text.split() for c in SCENES.colours):
        return "colour shape"  # "the red circle"
    return "shape"  # "the (small) circle"


@torch.no_grad()
def diagnose(model, task: Grounding, test: TaskDataset, batch_size: int = 64) -> dict:
    """Accuracy@IoU0.5 by expression kind and where the wrong answers went (see the module
    docstring); greedy answers as `Grounding.locate` reads them (the first box)."""
    model.eval()
    counts = dict.fromkeys(["right", "no box", "wrong object", "imprecise", "off every object"], 0)
    kinds: dict[str, list[int]] = {}
    ious: list[float] = []
    for start in range(0, len(test), batch_size):
        items = [test[i] for i in range(start, min(len(test), start + batch_size))]
        batch = task.collate(items)
        texts = task._answers(model, batch["prompt_ids"], batch["prompt_mask"], batch["images"], 6)
        for (sample, ex), text in zip(items, texts):
            H, W = sample.image_hw
            boxes = torch.tensor([[b.x0 / W, b.y0 / H, b.x1 / W, b.y1 / H] for b in sample.boxes])
            ref = sample.refs[ex.part - len(dict.fromkeys(b.label for b in sample.boxes))]
            found = text_to_boxes(text, task.num_bins)
            if not found:
                outcome = "no box"
            else:
                iou_M = box_iou(torch.tensor([found[0][0]]), boxes)[0]
                ious.append(float(iou_M[ref.box]))
                if iou_M[ref.box] >= 0.5:
                    outcome = "right"
                elif iou_M.max() == 0:
                    outcome = "off every object"
                elif int(iou_M.argmax()) != ref.box and iou_M.max() > iou_M[ref.box]:
                    outcome = "wrong object"
                else:
                    outcome = "imprecise"
            counts[outcome] += 1
            kinds.setdefault(ref_kind(ref.text), []).append(outcome == "right")
    n = sum(counts.values())
    return {
        "num_refs": n,
        "acc@0.5": counts["right"] / n,
        "outcomes": counts,
        "mean_iou_with_target": sum(ious) / max(1, len(ious)),
        "acc_by_kind": {k: [sum(v) / len(v), len(v)] for k, v in sorted(kinds.items())},
    }


def start_vision_from(model, directory: str) -> None:
    """Load a saved detector's backbone weights into `model.vision` (same shapes)."""
    detector = load_model(directory)
    model.vision.load_state_dict(detector.backbone.state_dict(), strict=True)


def train_detector(work: Path, seed: int) -> tuple[str, dict]:
    """Stage 1 of the recipe: the `det-small` detector (`benchmarks/detection.py`, its recipe)
    on the same scenes, saved under `work`; reused when already there. Its directory and
    results (the CPU seconds count toward the grounding recipe's training time)."""
    run_dir = work / f"detector-seed{seed}"
    result_file = run_dir / "result.json"
    if not result_file.exists():
        r = DET_RECIPE
        result = detection.run_one(
            "det-small",
            "patch",
            seed,
            r.steps,
            r.num_train,
            200,
            r.lr,
            r.batch_size,
            run_dir,
            save_model=True,
        )
        write_json_atomic(result_file, result)
    return str(run_dir / "model"), json.loads(result_file.read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="decoder-small-moe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--num-train", type=int, default=20000)
    p.add_argument("--num-eval", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bins", type=int, default=32, help="location bins (0: one per pixel)")
    p.add_argument("--loc-sigma", type=float, default=1.0, help="soft location target, bins")
    p.add_argument("--loc-init", default="sincos", choices=["random", "sincos"])
    p.add_argument(
        "--vision-from",
        default="detector",
        help="'detector' (train det-small first, stage 1), a saved detector's directory, "
        "or 'scratch'",
    )
    p.add_argument(
        "--image-positions",
        default="sincos",
        choices=["none", "sincos"],
        help="2-D positions added to the image tokens the LM reads",
    )
    p.add_argument(
        "--image-first",
        dest="image_after_prompt",
        action="store_false",
        help="[image ; prompt ; answer] instead of [prompt ; image ; answer]",
    )
    p.add_argument("--freeze", nargs="*", default=[], help="components not trained (vision)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--out", default="benchmarks/results/grounding.json")
    p.add_argument("--work", default="runs/grounding")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config override, e.g. vision.patch_embed=conv (repeatable)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    train_set = ShapesDataset(SCENES, "train", args.num_train)
    test_set = ShapesDataset(SCENES, "test", args.num_eval)
    prompts = ["detect", "locate"] * 20
    tok = Tokenizer.train(
        itertools.chain(prompts, ShapesDataset(SCENES, "train", 2000).texts()), vocab_size=400
    )
    gcfg = GroundingConfig(num_bins=args.bins or None, loc_sigma=args.loc_sigma)
    task = Grounding(TaskInfo("grounding", "decoder", 64, MAX_LEN), tok, gcfg)  # + location tokens
    flip = ImageTransform(None, hflip="swap_text")
    train = TaskDataset(train_set, task.examples(train_set, "train"), 64, flip.augment, args.seed)
    test = TaskDataset(test_set, task.examples(test_set, "eval"), 64)
    overrides = dict(parse_override(kv) for kv in args.set)
    overrides.setdefault("image_positions", args.image_positions)
    stage1: dict = {}
    if args.vision_from == "detector":
        args.vision_from, stage1 = train_detector(Path(args.work), args.seed)
    elif args.vision_from == "scratch":
        args.vision_from = None
    if args.vision_from:
        backbone = load_model(args.vision_from).config.backbone
        overrides.update({f"vision.{k}": getattr(backbone, k) for k in VISION_FIELDS})
    if args.image_after_prompt:
        overrides["image_token_id"] = tok.image_id
    model = create_model(args.preset, vocab_size=tok.vocab_size, max_seq_len=MAX_LEN, **overrides)
    if args.vision_from:
        start_vision_from(model, args.vision_from)
    if args.loc_init == "sincos":
        init_location_embeddings(model, task.loc_ids)
    freeze(model, args.freeze)
    cfg = RunConfig(
        optim=OptimizerConfig(lr=args.lr),
        schedule=ScheduleConfig(warmup_steps=max(1, args.steps // 20)),
        train=TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            num_threads=1,
            progress="none",
            tensorboard="none",
            log_every=50,
        ),
    )
    options = {
        "bins": task.num_bins,
        "loc_sigma": args.loc_sigma,
        "loc_init": args.loc_init,
        "vision_from": args.vision_from,
        "freeze": args.freeze,
    }
    tag = "".join(
        f"/{k}={v}"
        for k, v in overrides.items()
        if (not args.vision_from or "vision." not in k)
        and k != "image_token_id"
        and (k, v) != ("image_positions", "none")
    )
    tag += "/image-after-prompt" if args.image_after_prompt else ""
    tag += f"/bins{task.num_bins}" if task.num_bins != 64 else ""
    tag += f"/sigma{args.loc_sigma}" if args.loc_sigma else ""
    tag += "/sincos" if args.loc_init == "sincos" else ""
    tag += "/vision-from-detector" if args.vision_from else ""
    tag += "".join(f"/freeze-{c}" for c in args.freeze)
    key = f"{args.preset}{tag}/seed{args.seed}/steps{args.steps}/lr{args.lr}"
    run_dir = Path(args.work) / key.replace("/", "-").replace("=", "_")
    trainer = Trainer(
        model, task.loss, train, task.collate, cfg, run_dir, arch="decoder", eval_at_end=False
    )
    t0, c0 = time.perf_counter(), time.process_time()
    done = checkpoint_dirs(run_dir) if args.resume else []
    resumed_at = int(done[-1].name.split("_")[-1]) if done else 0
    trainer.fit(resume=bool(done))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.save_pretrained(run_dir / "model", tokenizer=tok)
    task.info.save(run_dir / "model")
    metrics = run_evaluators(model, task.evaluators(eval_loader(test, task.collate, 64)))
    diagnosis = diagnose(model, task, test)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}  # read late: shared file
    stage1_cpu = stage1.get("train_cpu_seconds", 0.0)
    results[key] = {
        "train_seconds": seconds,
        "train_cpu_seconds": cpu,
        "detector_train_cpu_seconds": stage1_cpu,  # stage 1 (0: a given or no detector)
        "detector_metrics": stage1.get("metrics", {}),
        "steps": args.steps,
        "resumed_at_step": resumed_at,  # the seconds above are this call's (steps after it)
        "cpu_seconds_per_step": cpu / max(1, args.steps - resumed_at),
        "num_refs": len(test),
        "batch_size": args.batch_size,
        "overrides": overrides,
        "options": options,
        "metrics": metrics,
        "diagnosis": diagnosis,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, results)
    print(
        f"{key}: acc@0.5 {metrics['grounding/acc@0.5']:.3f} over {len(test)} referring "
        f"expressions; train {seconds / 60:.1f} min wall, {cpu / 60:.1f} min CPU"
        + (f" (+ {stage1_cpu / 60:.1f} min CPU for the detector)" if stage1 else "")
    )
    print(f"diagnosis: {json.dumps(diagnosis)}")


if __name__ == "__main__":
    main()
