"""What a scene-VQA fusion model does and does not use (issue 17): prints three tables.

1. The blind baseline: the majority answer of each question string in the training scenes,
   scored on held-out scenes (what a model that never looks at the image can reach), per type.
2. For a trained fusion model (`--model runs/demo/fusion-dense`): held-out accuracy per question
   type and number of objects in the scene. Questions about a lone object need no binding of
   the question to one object; the others do.
3. Linear probes of the model's patch tokens: how well the colour and the shape of an object can
   be read (logistic regression, fit on training scenes, scored on held-out ones) from the
   token at its centre, from the raw pixels of that patch, after each conv stem layer, after the
   patch embedding and after the transformer.

    .venv/bin/python benchmarks/scene_vqa_diagnosis.py --model runs/demo/fusion-dense
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from vlmoe.data.shapes import ShapesConfig
from vlmoe.data.shapes_data import make_sample
from vlmoe.nn.embed import ConvStem, HybridEmbed
from vlmoe.recipes.run import load_trained
from vlmoe.train.config import RunConfig


def blind_baseline(world: ShapesConfig, num_train: int, num_eval: int) -> dict[str, float]:
    """Held-out accuracy of answering each question with its majority training answer (the
    question type's majority answer for a question never seen in training)."""
    by_question: dict[str, Counter] = defaultdict(Counter)
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for i in range(num_train):
        for qa in make_sample(world, "train", i, draw=False).qa:
            by_question[qa.question][qa.answer] += 1
            by_kind[qa.kind][qa.answer] += 1
    hits: dict[str, list[bool]] = defaultdict(list)
    for i in range(num_eval):
        for qa in make_sample(world, "test", i, draw=False).qa:
            counts = by_question.get(qa.question) or by_kind[qa.kind]
            hits[qa.kind].append(counts.most_common(1)[0][0] == qa.answer)
    out = {k: float(np.mean(v)) for k, v in sorted(hits.items())}
    out["all"] = float(np.mean([h for v in hits.values() for h in v]))
    return out


def accuracy_by_objects(model: nn.Module, task, world: ShapesConfig, num_eval: int):
    """{(question type, number of objects): (accuracy, count)} over held-out scenes."""
    hits: dict[tuple[str, int], list[bool]] = defaultdict(list)
    for i in range(num_eval):
        s = make_sample(world, "test", i)
        for qa in s.qa:
            answer = task.predict(model, s.image, qa.question, top=1).text
            hits[(qa.kind, len(s.boxes))].append(answer == qa.answer)
    return {k: (float(np.mean(v)), len(v)) for k, v in sorted(hits.items())}


def _object_tokens(model: nn.Module, task, world: ShapesConfig, split: str, n: int):
    """Images, (image index, patch index) of each object's centre, its colour and shape ids."""
    images, where, colour, shape = [], [], [], []
    gh, gw = model.image_embed.grid_size
    patch = world.image_size // gw
    for i in range(n):
        s = make_sample(world, split, i)
        images.append(task.image_batch(s.image, model)[0])
        for o in s.meta["scene"].objects:
            cx, cy = (o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2
            where.append((i, int(cy // patch) * gw + int(cx // patch)))
            colour.append(world.colours.index(o.colour))
            shape.append(world.shapes.index(o.shape))
    return torch.stack(images), where, np.array(colour), np.array(shape)


def _probe(fit, score, feature: Callable[[Tensor], Tensor]) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    with torch.no_grad():
        fa, fb = feature(fit[0]), feature(score[0])  # (B, N, C)
    xa = np.stack([fa[i, k].float().numpy() for i, k in fit[1]])
    xb = np.stack([fb[i, k].float().numpy() for i, k in score[1]])
    return tuple(
        LogisticRegression(max_iter=3000).fit(xa, fit[j]).score(xb, score[j]) for j in (2, 3)
    )


def probes(model: nn.Module, task, world: ShapesConfig, num_fit: int, num_score: int):
    """{where: (colour probe accuracy, shape probe accuracy)}."""
    fit = _object_tokens(model, task, world, "train", num_fit)
    score = _object_tokens(model, task, world, "test", num_score)
    grid = model.image_embed.grid_size
    patch = world.image_size // grid[1]

    def tokens(x_BCHW: Tensor) -> Tensor:  # (B, C, H', W') -> (B, N, C) on the patch grid
        x_BCHW = nn.functional.adaptive_avg_pool2d(x_BCHW, grid)
        return x_BCHW.flatten(2).transpose(1, 2)

    out = {
        "raw pixels of the patch": _probe(
            fit, score, lambda x: tokens(nn.functional.pixel_unshuffle(x, patch))
        )
    }
    embed = model.image_embed.patch
    stem = embed.stem if isinstance(embed, HybridEmbed) else embed
    if isinstance(stem, ConvStem):
        for i in range(2, len(stem.convs), 3):
            out[f"conv stem layer {i // 3 + 1}"] = _probe(
                fit, score, lambda x, i=i: tokens(stem.convs[: i + 1](x))
            )
    out["patch embedding"] = _probe(fit, score, lambda x: model.embed_image(x)[0])
    out["after the transformer"] = _probe(
        fit, score, lambda x: model(images=x).hidden_states[:, : grid[0] * grid[1]]
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a trained fusion run or model directory (tables 2 and 3)")
    p.add_argument("--num-train", type=int, default=3000, help="training scenes (table 1)")
    p.add_argument("--num-eval", type=int, default=200, help="held-out scenes")
    args = p.parse_args()
    torch.set_num_threads(1)
    world = ShapesConfig(image_size=32)
    if args.model:
        model, task = load_trained(args.model)
        model.eval()
        try:
            world = RunConfig.from_yaml(f"{args.model}/config.yaml").data.shapes
            world = ShapesConfig(**{**world.to_dict(), "image_size": task.info.image_size})
        except OSError:
            world = ShapesConfig(image_size=task.info.image_size)
    base = blind_baseline(world, args.num_train, args.num_eval)
    print("blind baseline (majority answer per question string), held-out accuracy:")
    print("  " + "  ".join(f"{k} {v:.1%}" for k, v in base.items()))
    if not args.model:
        return
    print("\nheld-out accuracy by question type and number of objects:")
    for (kind, n), (acc, count) in accuracy_by_objects(model, task, world, args.num_eval).items():
        print(f"  {kind:8s} {n} objects: {acc:6.1%}  (n={count})")
    print("\nlinear probes of the object's centre token (held-out accuracy), colour / shape:")
    for where, (c, s) in probes(model, task, world, 400, 150).items():
        print(f"  {where:26s} {c:6.1%} / {s:6.1%}")


if __name__ == "__main__":
    main()
