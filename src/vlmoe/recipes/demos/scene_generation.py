"""Caption-conditioned generation of one-object scenes with a diffusion transformer, and how it
is judged (`benchmarks/imagegen_shapes.py` runs it).

The world: 32x32 scenes of vlmoe's scene world with exactly one (large) object on a plain
background, whose one caption names its colour, its shape and the cell of a 3x3 grid that
holds its centre (`ShapesConfig.caption_positions`: "a large red circle at the top left").
The generator: `vlmoe train --task text-to-image` with rectified flow, 10% caption dropout for
classifier-free guidance and EMA weights (the MNIST recipe of `vlmoe.recipes.demos.generation`).
The judges: two `JudgeCNN`s trained on real training scenes and scored on held-out ones: one
reads the object (its colour and shape, one of colours x shapes classes; trained with random
2-pixel shifts), one its position cell (trained without shifts, which could move the object
into another cell). A generated image is right in an attribute when the judge reads the value
its caption asked for.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from vlmoe.data.grammar import position_cell
from vlmoe.data.shapes import ShapesConfig
from vlmoe.data.shapes_data import ShapesDataset
from vlmoe.data.transforms import to_tensor
from vlmoe.eval.image_generation import (
    JudgeCNN,
    generate_for_captions,
    judge_outputs,
    load_judge,
    save_judge,
    train_judge,
)
from vlmoe.recipes.demos.generation import Recipe, flow_training_overrides
from vlmoe.train.config import RunConfig, apply_overrides

log = logging.getLogger(__name__)

ATTRIBUTES = ("colour", "shape", "position")
JUDGES = ("object", "position")  # object = colour index * len(shapes) + shape index


@dataclass(frozen=True)
class SceneRecipe(Recipe):
    """Training and sampling settings of the one-object scene generator: the MNIST recipe's,
    longer, on generated scenes."""

    steps: int = 1200
    num_train: int = 8000  # training scenes (each seen steps * batch / num_train times)
    image_size: int = 32


SCENE_RECIPE = SceneRecipe()


def scene_world(image_size: int = 32) -> ShapesConfig:
    """One large object per scene, one caption that says where it is."""
    return ShapesConfig(
        image_size=image_size, max_objects=1, num_captions=1, caption_positions=True
    )


def scene_generation_config(
    preset: str, recipe: SceneRecipe = SCENE_RECIPE, seed: int = 0
) -> RunConfig:
    """The `RunConfig` of the recipe for a caption-conditioned DiT preset."""
    world = scene_world(recipe.image_size)
    overrides = [
        f"model.preset={preset}",
        "task=text-to-image",
        "data.name=shapes",
        f"data.image_size={recipe.image_size}",
        f"data.num_train={recipe.num_train}",
        "data.num_eval=200",
        f"data.shapes.max_objects={world.max_objects}",
        f"data.shapes.num_captions={world.num_captions}",
        "data.shapes.caption_positions=true",
        *flow_training_overrides(recipe, seed),
    ]
    return apply_overrides(RunConfig(), overrides)


def scene_tensors(
    split: str, num: int, image_size: int = 32
) -> tuple[Tensor, list[str], dict[str, Tensor]]:
    """(images (N, 3, S, S) in [-1, 1], captions, {attribute: (N,) target index}) of the
    first `num` scenes of a split of the one-object world."""
    world = scene_world(image_size)
    data = ShapesDataset(world, split, num)  # type: ignore[arg-type]
    images, captions = [], []
    targets: dict[str, list[int]] = {name: [] for name in ATTRIBUTES}
    for i in range(num):
        sample = data.get(i)
        (obj,) = sample.meta["scene"].objects
        images.append(to_tensor(sample.image))
        captions.append(sample.captions[0])
        targets["colour"].append(world.colours.index(obj.colour))
        targets["shape"].append(world.shapes.index(obj.shape))
        targets["position"].append(position_cell(*obj.centre, image_size))
    return (
        torch.stack(images),
        captions,
        {k: torch.tensor(v, dtype=torch.long) for k, v in targets.items()},
    )


def judge_targets(targets: dict[str, Tensor], num_shapes: int) -> dict[str, Tensor]:
    """The class each judge should read: {"object": colour * num_shapes + shape, "position"}."""
    return {
        "object": targets["colour"] * num_shapes + targets["shape"],
        "position": targets["position"],
    }


def read_attributes(
    judges: dict[str, JudgeCNN], images: Tensor, num_shapes: int
) -> dict[str, Tensor]:
    """{attribute: (N,) index} the judges read from images (N, 3, S, S) in [-1, 1]."""
    _, obj = judge_outputs(judges["object"], images)
    _, position = judge_outputs(judges["position"], images)
    return {"colour": obj // num_shapes, "shape": obj % num_shapes, "position": position}


def get_scene_judges(
    directory: Path,
    num_train: int = 3000,
    num_test: int = 1000,
    epochs: dict[str, int] | None = None,
    image_size: int = 32,
) -> tuple[dict[str, JudgeCNN], dict[str, float]]:
    """({judge name: judge}, {attribute: held-out accuracy}): loaded from `directory`
    (judge-<name>.safetensors), else trained on real training scenes and saved there.
    `epochs` per judge: the object judge needs more than the position judge (shape read on
    66.6% of held-out scenes after 6 epochs)."""
    epochs = epochs or {"object": 20, "position": 6}
    world = scene_world(image_size)
    n_shapes = len(world.shapes)
    sizes = {"object": len(world.colours) * n_shapes, "position": 9}
    train_set = None
    judges = {}
    for name in JUDGES:
        path = Path(directory) / f"judge-{name}.safetensors"
        if path.is_file():
            judges[name] = load_judge(path)
            continue
        if train_set is None:
            train_set = scene_tensors("train", num_train, image_size)
        t0 = time.perf_counter()
        judges[name] = train_judge(
            train_set[0],
            judge_targets(train_set[2], n_shapes)[name],
            num_classes=sizes[name],
            epochs=epochs[name],
            max_shift=0 if name == "position" else 2,
        )
        save_judge(judges[name], path)
        log.info("%s judge trained in %.0f s", name, time.perf_counter() - t0)
    test_images, _, test_targets = scene_tensors("test", num_test, image_size)
    return judges, attribute_accuracy(judges, test_images, test_targets)


def attribute_accuracy(
    judges: dict[str, JudgeCNN], images: Tensor, targets: dict[str, Tensor]
) -> dict[str, float]:
    """The fraction of `images` whose judges read each target attribute, and the joint
    fractions `colour+shape` and `all` (every attribute right)."""
    read = read_attributes(judges, images, len(scene_world().shapes))
    right = {name: read[name] == targets[name] for name in ATTRIBUTES}
    result = {name: float(r.float().mean()) for name, r in right.items()}
    result["colour+shape"] = float((right["colour"] & right["shape"]).float().mean())
    result["all"] = float(torch.stack(list(right.values())).all(0).float().mean())
    return result


def score_scenes(
    model: nn.Module,
    tokenizer,
    judges: dict[str, JudgeCNN],
    num: int = 500,
    recipe: SceneRecipe = SCENE_RECIPE,
    seed: int = 0,
) -> tuple[dict[str, float], Tensor, list[str]]:
    """(accuracies, images, captions): one image for each caption of the first `num` held-out
    scenes, judged attribute by attribute (`attribute_accuracy`)."""
    _, captions, targets = scene_tensors("test", num, recipe.image_size)
    t0 = time.perf_counter()
    images = caption_grid(model, tokenizer, captions, 1, recipe, seed)
    result = attribute_accuracy(judges, images, targets)
    result["sample_s"] = time.perf_counter() - t0
    return result, images, captions


def caption_grid(
    model: nn.Module,
    tokenizer,
    captions: list[str],
    per_caption: int,
    recipe: SceneRecipe = SCENE_RECIPE,
    seed: int = 0,
) -> Tensor:
    """`per_caption` images of each caption, caption by caption (one grid row each), sampled
    by the recipe's sampler."""
    repeated = [c for c in captions for _ in range(per_caption)]
    return generate_for_captions(
        model,
        tokenizer,
        repeated,
        steps=recipe.sample_steps,
        cfg_scale=recipe.cfg_scale,
        sampler=recipe.sampler,  # type: ignore[arg-type]
        seed=seed,
    )
