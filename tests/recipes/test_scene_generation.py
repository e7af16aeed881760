"""The caption-conditioned scene recipe: its world and config, the attribute targets, the
judging arithmetic and per-caption sampling (tiny models; the benchmark is the real run)."""

import torch

import vlmoe
from vlmoe.data.grammar import POSITIONS
from vlmoe.data.tokenizer import Tokenizer
from vlmoe.eval.image_generation import JudgeCNN, generate_for_captions
from vlmoe.recipes.demos.scene_generation import (
    SCENE_RECIPE,
    attribute_accuracy,
    scene_generation_config,
    scene_tensors,
    scene_world,
)


def test_recipe_config_trains_text_to_image_on_placed_one_object_scenes():
    cfg = scene_generation_config("dit-small-text-xattn", seed=1)
    assert cfg.task == "text-to-image" and cfg.data.name == "shapes" and cfg.train.seed == 1
    assert cfg.data.image_size == SCENE_RECIPE.image_size and cfg.train.steps == SCENE_RECIPE.steps
    world = cfg.data.world(32)
    assert (world.max_objects, world.num_captions, world.caption_positions) == (1, 1, True)


def test_scene_targets_are_what_the_captions_say():
    images, captions, targets = scene_tensors("test", 12)
    world = scene_world()
    assert images.shape == (12, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    for i, caption in enumerate(captions):
        colour = world.colours[targets["colour"][i]]
        shape = world.shapes[targets["shape"][i]]
        assert caption.startswith(f"a large {colour} {shape} ")
        assert caption.endswith(f"the {POSITIONS[targets['position'][i]]}")


def constant_judge(num_classes: int, value: int) -> JudgeCNN:
    """A judge that reads every image as class `value`."""
    judge = JudgeCNN(3, 32, num_classes)
    for p in judge.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        judge.head.bias[value] = 1.0
    return judge.eval()


def test_attribute_accuracy_counts_each_attribute_and_the_joint_ones():
    # The object judge reads colour 1, shape 2 (class 1 * 4 + 2); the position judge cell 4.
    judges = {"object": constant_judge(24, 6), "position": constant_judge(9, 4)}
    targets = {
        "colour": torch.tensor([1, 1, 1, 0]),
        "shape": torch.tensor([2, 2, 0, 2]),
        "position": torch.tensor([4, 0, 4, 4]),
    }
    acc = attribute_accuracy(judges, torch.zeros(4, 3, 32, 32), targets)
    assert acc == {
        "colour": 0.75,
        "shape": 0.75,
        "position": 0.75,
        "colour+shape": 0.5,
        "all": 0.25,
    }


def test_generate_for_captions_gives_one_image_per_caption_whatever_the_batch():
    texts = ["a large red circle at the top left", "a large blue square on the right"]
    tokenizer = Tokenizer.train(texts * 4, vocab_size=48)
    torch.manual_seed(0)
    model = vlmoe.create_model("dit-debug-text-xattn").eval()
    captions = [texts[0], texts[1], texts[0]]
    kw = dict(steps=2, cfg_scale=2.0, seed=3)
    one = generate_for_captions(model, tokenizer, captions, batch_size=1, **kw)
    all3 = generate_for_captions(model, tokenizer, captions, batch_size=3, **kw)
    assert one.shape == (3, 3, 16, 16) and one.abs().max() <= 1
    torch.testing.assert_close(one, all3, atol=1e-5, rtol=1e-5)
