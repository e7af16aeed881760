"""Grounding by generation: a decoder VLM answers "locate <referring expression>" and
"detect <label>" with location tokens; scored by accuracy@IoU0.5 on held-out scenes.

Scenes as in `benchmarks/detection.py` (1-6 objects, occlusion up to 30%, 64x64). The decoder is
the `decoder-small` preset (ViT encoder, MLP projector, causal LM; `-moe`: E=8 top-2 in every
other LM block) with the scene tokenizer plus 64 location tokens (one bin per pixel). Training
samples pick one grounding pair at random per scene per step (`GroundingQA` +
`GenerationCollate(task="vqa")`); held-out accuracy is over every referring expression
("locate ...") of the test scenes, decoded greedily.

    OMP_NUM_THREADS=1 python benchmarks/grounding.py --preset decoder-small-moe --steps 1500
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vlmoe.data.collate import GenerationCollate
from vlmoe.data.locations import GroundingQA, add_location_tokens, text_to_boxes
from vlmoe.data.shapes import ShapesConfig
from vlmoe.data.shapes_data import ShapesDataset
from vlmoe.data.tokenizer import Tokenizer
from vlmoe.data.transforms import ImageTransform
from vlmoe.eval.detection import grounding_accuracy
from vlmoe.registry import create_model
from vlmoe.train.checkpoint import write_json_atomic
from vlmoe.train.config import OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from vlmoe.train.trainer import StepOutput, Trainer

# The scenes of benchmarks/detection.py.
SCENES = ShapesConfig(
    image_size=64, min_objects=1, max_objects=6, occlusion=0.3, large_objects="any", seed=0
)
NUM_BINS = 64
MAX_LEN = 40


class _Composed:
    def __init__(self, *fns):
        self.fns = fns

    def __call__(self, s):
        for f in self.fns:
            s = f(s)
        return s


def objective(model, batch: dict) -> StepOutput:
    out = model(batch["images"], batch["input_ids"], batch["attention_mask"])
    logits = out.logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    return StepOutput(loss, {}, out.moe_aux, len(batch["images"]))


def locate(model, tok: Tokenizer, batch: dict) -> torch.Tensor:
    """Greedy answers -> first box of each (a box of zeros when none parses)."""
    new = model.generate(
        batch["prompt_ids"],
        batch["prompt_mask"],
        images=batch["images"],
        max_new_tokens=6,
        stop_tokens=[tok.eos_id],
        pad_token_id=tok.pad_id,
    )
    boxes = []
    for text in tok.decode_batch(new):
        found = text_to_boxes(text, NUM_BINS)
        boxes.append(found[0][0] if found else (0.0, 0.0, 0.0, 0.0))
    return torch.tensor(boxes)


def evaluate(model, tok, num_eval: int) -> dict:
    ds = ShapesDataset(
        SCENES, "test", num_eval, _Composed(ImageTransform(64), GroundingQA(NUM_BINS, ["locate"]))
    )
    collate = GenerationCollate(tok, task="vqa", max_len=MAX_LEN, num_image_tokens=0, pick="first")
    hits, n = 0.0, 0
    model.eval()
    for s in ds:
        singles = [s.replace(qa=[qa]) for qa in s.qa]
        batch = collate(singles)
        target = torch.tensor([text_to_boxes(qa.answer, NUM_BINS)[0][0] for qa in s.qa])
        with torch.no_grad():
            pred = locate(model, tok, batch)
        hits += grounding_accuracy(pred, target) * len(target)
        n += len(target)
    model.train()
    return {"grounding/acc@0.5": hits / n, "num_refs": n}


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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    print(f"CPU: {platform.processor() or platform.machine()}; torch threads 1")
    train = ShapesDataset(SCENES, "train", args.num_train)
    extra = ["detect", "locate"] * 20
    tok = Tokenizer.train(
        itertools.chain(extra, ShapesDataset(SCENES, "train", 2000).texts()), vocab_size=400
    )
    add_location_tokens(tok, NUM_BINS)
    train.transform = _Composed(ImageTransform(64, hflip="swap_text"), GroundingQA(NUM_BINS))
    model = create_model(args.preset, vocab_size=len(tok), max_seq_len=MAX_LEN)
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
    collate = GenerationCollate(tok, task="vqa", max_len=MAX_LEN, num_image_tokens=0)
    key = f"{args.preset}/seed{args.seed}/steps{args.steps}/lr{args.lr}"
    trainer = Trainer(
        model,
        objective,
        train,
        collate,
        cfg,
        Path(args.work) / key.replace("/", "-"),
        arch="decoder",
        eval_at_end=False,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.save_pretrained(Path(args.work) / key.replace("/", "-") / "model", tokenizer=tok)
    metrics = evaluate(model, tok, args.num_eval)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}  # read late: shared file
    results[key] = {
        "train_seconds": seconds,
        "train_cpu_seconds": cpu,
        "steps": args.steps,
        "metrics": metrics,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, results)
    print(
        f"{key}: acc@0.5 {metrics['grounding/acc@0.5']:.3f} over {metrics['num_refs']} refs; "
        f"train {seconds / 60:.1f} min wall, {cpu / 60:.1f} min CPU"
    )


if __name__ == "__main__":
    main()
