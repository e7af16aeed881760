"""The scene world as samples: a streaming torch dataset and a PNG + JSONL writer.

``ShapesDataset(cfg, split, num)[i]`` and the ``i``-th line written by
``write_shapes(out_dir, num, split=split, cfg=cfg)`` are the same sample, byte for byte, because
both call :func:`make_sample`, a pure function of ``(cfg, split, index)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmoe.data.grammar import answer_vocab, make_captions, make_questions, make_refs
from vlmoe.data.manifest import write_manifest
from vlmoe.data.render import render
from vlmoe.data.sample import QA, Box, RefExp, Sample, Transform, VLDataset
from vlmoe.data.shapes import (
    SPLITS,
    STREAM_TEXT,
    Scene,
    ShapesConfig,
    Split,
    generate_scene,
    scene_label,
    split_rng,
)

logger = logging.getLogger(__name__)


def scene_texts(
    scene: Scene, cfg: ShapesConfig, split: str, index: int
) -> tuple[list[str], list[QA], list[RefExp]]:
    """Captions, questions and referring expressions of a scene (its own RNG stream)."""
    rng = split_rng(cfg.seed, split, index, stream=STREAM_TEXT)
    captions = make_captions(scene, rng, cfg.num_captions, cfg.caption_positions)
    qa = make_questions(scene, cfg, rng, cfg.num_questions, split)
    return captions, qa, make_refs(scene)


def make_sample(cfg: ShapesConfig, split: Split, index: int, *, draw: bool = True) -> Sample:
    """Sample ``index`` of ``split``: image, captions, QA, label, boxes, refs; meta holds the scene.

    With ``draw=False`` the image is an empty (0, 0, 3) array (for text-only passes).
    """
    scene = generate_scene(cfg.seed, index, cfg, split)
    captions, qa, refs = scene_texts(scene, cfg, split, index)
    image = render(scene) if draw else np.zeros((0, 0, 3), dtype=np.uint8)
    boxes = [Box(*o.box, o.name) for o in scene.objects]
    meta = {"source": "shapes", "split": split, "index": index, "seed": cfg.seed, "scene": scene}
    return Sample(image, captions, qa, scene_label(scene, cfg), boxes, refs, meta)


class ShapesDataset(VLDataset):
    """``num`` scene-world samples of one split, generated on the fly.

    Args:
        cfg: the world's configuration (seed included).
        split: "train", "val", "test" or "comp_test" (held-out pairs only; see ShapesConfig).
        num: number of samples.
        transform: applied to each sample in ``__getitem__``.
    """

    def __init__(
        self,
        cfg: ShapesConfig | None = None,
        split: Split = "train",
        num: int = 1000,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(transform)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if num < 0:
            raise ValueError(f"num must be >= 0, got {num}")
        self.cfg = cfg or ShapesConfig()
        if split == "comp_test" and not self.cfg.holdout:
            raise ValueError("split 'comp_test' needs ShapesConfig.holdout pairs")
        self.split: Split = split
        self.num = num
        self.label_names = self.cfg.label_names
        self.answer_vocab = answer_vocab(self.cfg)
        self.box_label_names = self.cfg.box_label_names

    def __len__(self) -> int:
        return self.num

    def get(self, index: int) -> Sample:
        return make_sample(self.cfg, self.split, index)

    def describe(self, index: int) -> Sample:
        return make_sample(self.cfg, self.split, index, draw=False)


@dataclass(frozen=True)
class WriteReport:
    """What :func:`write_shapes` wrote."""

    manifest: Path
    num: int
    seconds: float


def write_shapes(
    out_dir: str | Path,
    num: int,
    seed: int | None = None,
    split: Split = "train",
    cfg: ShapesConfig | None = None,
) -> WriteReport:
    """Write ``num`` scene-world samples as ``out_dir/images/*.png`` + ``out_dir/manifest.jsonl``.

    The manifest reads back with :class:`~vlmoe.data.manifest.ManifestDataset` into the same
    samples as ``ShapesDataset(cfg, split, num)``; ``labels.txt``, ``answers.txt``,
    ``box_labels.txt`` and ``shapes_config.json`` are written next to it.

    Args:
        out_dir: output folder (created).
        num: number of samples.
        seed: overrides ``cfg.seed`` when given.
        split: which split to write.
        cfg: the world; default ``ShapesConfig()``.
    """
    cfg = cfg or ShapesConfig()
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    ds = ShapesDataset(cfg, split, num)
    t0 = time.perf_counter()
    out = Path(out_dir)
    manifest = write_manifest(
        (ds.get(i) for i in range(num)),
        out,
        label_names=ds.label_names or None,
        answer_vocab=ds.answer_vocab,
        box_label_names=ds.box_label_names,
    )
    (out / "shapes_config.json").write_text(
        json.dumps({"split": split, "num": num, **cfg.to_dict()}, indent=2) + "\n", encoding="utf-8"
    )
    seconds = time.perf_counter() - t0
    logger.info("wrote %d %s scenes to %s in %.1fs", num, split, out, seconds)
    return WriteReport(manifest, num, seconds)


def cli_write(
    out: str | Path,
    num: int,
    *,
    seed: int = 0,
    split: str = "train",
    image_size: int = 64,
    min_objects: int = 1,
    max_objects: int = 4,
    background: str = "plain",
    holdout: list[str] | None = None,
    config: str | Path | None = None,
) -> WriteReport:
    """Entry point for ``vlmoe data shapes --out DIR --num N [options]``.

    Args:
        out: output folder.
        num: number of samples.
        seed, split, image_size, min_objects, max_objects, background: as in ShapesConfig.
        holdout: held-out pairs as "colour:shape" strings, e.g. ["red:circle", "blue:star"].
        config: a JSON file of ShapesConfig fields; explicit arguments above override it only
            where they differ from their defaults.

    Returns:
        A WriteReport (manifest path, count, seconds) for the CLI to show.

    Raises:
        ValueError: bad option values, with the field and value named.
    """
    base = ShapesConfig()
    if config is not None:
        base = ShapesConfig.from_dict(json.loads(Path(config).read_text(encoding="utf-8")))
    pairs: list[tuple[str, str]] = []
    for h in holdout or []:
        if h.count(":") != 1:
            raise ValueError(f"holdout pair must be 'colour:shape', got {h!r}")
        colour, shape = h.split(":")
        pairs.append((colour.strip(), shape.strip()))
    fields = base.to_dict()
    defaults = ShapesConfig().to_dict()
    overrides = {
        "seed": seed,
        "image_size": image_size,
        "min_objects": min_objects,
        "max_objects": max_objects,
        "background": background,
    }
    for k, v in overrides.items():
        if v != defaults[k]:
            fields[k] = v
    if pairs:
        fields["holdout"] = pairs
    cfg = ShapesConfig.from_dict(fields)
    return write_shapes(out, num, split=split, cfg=cfg)  # type: ignore[arg-type]
