"""Grounding by generation: a decoder VLM answers "locate <referring expression>" and
"detect <label>" with location tokens (`vlmoe.tasks.grounding`); scored by accuracy@IoU0.5 of
the first generated box over every referring expression of held-out scenes.

Scenes as in `benchmarks/detection.py` (1-6 objects, occlusion up to 30%, 64x64). The decoder is
a `decoder-small` preset (ViT encoder, MLP projector, causal LM; `-moe`: E=8 top-2 in every
other LM block) with a BPE tokenizer trained on the scenes' texts plus 64 location tokens (one
bin per pixel). Training draws (image, prompt) examples; images are flipped at random with
left/right swapped in the texts and the boxes mirrored.

    OMP_NUM_THREADS=1 python benchmarks/grounding.py --preset decoder-small-moe --steps 1500
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import torch

from vlmoe.config import parse_override
from vlmoe.data.shapes import ShapesConfig
from vlmoe.data.shapes_data import ShapesDataset
from vlmoe.data.tokenizer import Tokenizer
from vlmoe.data.transforms import ImageTransform
from vlmoe.eval.runner import run_evaluators
from vlmoe.models.registry import create_model
from vlmoe.tasks import TaskDataset, TaskInfo, eval_loader
from vlmoe.tasks.grounding import Grounding
from vlmoe.train.checkpoint import write_json_atomic
from vlmoe.train.config import OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from vlmoe.train.trainer import Trainer

# The scenes of benchmarks/detection.py.
SCENES = ShapesConfig(
    image_size=64, min_objects=1, max_objects=6, occlusion=0.3, large_objects="any", seed=0
)
MAX_LEN = 40


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="decoder-small-moe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--num-train", type=int, default=20000)
    p.add_argument("--num-eval", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
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
    task = Grounding(TaskInfo("grounding", "decoder", 64, MAX_LEN), tok)  # adds location tokens
    flip = ImageTransform(None, hflip="swap_text")
    train = TaskDataset(train_set, task.examples(train_set, "train"), 64, flip.augment, args.seed)
    test = TaskDataset(test_set, task.examples(test_set, "eval"), 64)
    overrides = dict(parse_override(kv) for kv in args.set)
    model = create_model(args.preset, vocab_size=tok.vocab_size, max_seq_len=MAX_LEN, **overrides)
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
    tag = "".join(f"/{k}={v}" for k, v in overrides.items())
    key = f"{args.preset}{tag}/seed{args.seed}/steps{args.steps}/lr{args.lr}"
    run_dir = Path(args.work) / key.replace("/", "-").replace("=", "_")
    trainer = Trainer(
        model, task.loss, train, task.collate, cfg, run_dir, arch="decoder", eval_at_end=False
    )
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.save_pretrained(run_dir / "model", tokenizer=tok)
    task.info.save(run_dir / "model")
    metrics = run_evaluators(model, task.evaluators(eval_loader(test, task.collate, 64)))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}  # read late: shared file
    results[key] = {
        "train_seconds": seconds,
        "train_cpu_seconds": cpu,
        "steps": args.steps,
        "num_refs": len(test),
        "overrides": overrides,
        "metrics": metrics,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, results)
    print(
        f"{key}: acc@0.5 {metrics['grounding/acc@0.5']:.3f} over {len(test)} referring "
        f"expressions; train {seconds / 60:.1f} min wall, {cpu / 60:.1f} min CPU"
    )


if __name__ == "__main__":
    main()
