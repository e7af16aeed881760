"""The typed data parts of a run's config: the scene world and training augmentation."""

import torch

from vlmoe.recipes.run import prepare
from vlmoe.train.config import RunConfig

BASE = {
    "task": "vqa",
    "model": {"preset": "fusion-debug"},
    "data": {"num_train": 12, "num_eval": 4},
}


def _run(**data):
    cfg = RunConfig.from_dict({**BASE, "data": {**BASE["data"], **data}})
    return prepare(cfg)


def test_scene_world_options_reach_the_dataset():
    run = _run(shapes={"max_objects": 6, "occlusion": 0.3, "large_objects": "any"}, seed=4)
    world = run.train_data.dataset.cfg
    assert (world.max_objects, world.occlusion, world.large_objects) == (6, 0.3, "any")
    assert world.seed == 4 and world.image_size == run.info.image_size
    counts = {len(run.train_data.dataset[i].boxes) for i in range(12)}
    assert max(counts) > 4  # the default world has at most 4 objects


def test_augmentation_is_off_by_default_and_follows_the_stream_position():
    plain = _run()
    assert plain.train_data.augment is None
    run = _run(augment={"hflip": "swap_text", "hflip_prob": 1.0})
    assert run.train_data.augment is run.cfg.data.augment
    flipped, _ = run.train_data[0]
    original, _ = plain.train_data[0]
    assert torch.equal(flipped.image, original.image.flip(-1))
    assert flipped.meta.get("hflip") and not original.meta.get("hflip")
    a, b = _run(augment={"crop": "keep_boxes"}), _run(augment={"crop": "keep_boxes"})
    for k in (0, 5, 40):  # position k of the stream: the same crop in any process
        assert torch.equal(a.train_data[k][0].image, b.train_data[k][0].image)
    assert any(
        not torch.equal(a.train_data[k][0].image, a.train_data[k + 12][0].image) for k in range(4)
    )  # the same example in the next epoch gets another crop
    assert run.eval_data.augment is None  # held-out images are never augmented


def test_config_round_trip_keeps_the_typed_parts():
    cfg = RunConfig.from_dict(
        {
            **BASE,
            "data": {"shapes": {"holdout": [["red", "circle"]]}, "augment": {"crop": "keep_boxes"}},
        }
    )
    again = RunConfig.from_dict(cfg.to_dict())
    assert again.data.shapes.holdout == (("red", "circle"),)
    assert again.data.augment.crop_scale == (0.8, 1.0) and again == cfg
