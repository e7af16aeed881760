"""The scene world: a seeded generator of coloured-shape scenes.

A :class:`Scene` is a list of objects (shape, colour, size class, box) on a background. It is
drawn by :func:`vlmoe.data.render.render` and described by :mod:`vlmoe.data.grammar`
(captions, questions and answers, referring expressions). The world is in the spirit of CLEVR
(Johnson et al., 2017) and its CoGenT compositional split: some colour-shape pairs can be held out
of training and shown only in a ``comp_test`` split.

Every scene is a pure function of ``(seed, split, index)``: its RNG is seeded from those three
numbers alone, so a sample never depends on worker count, order or what was generated before.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from vlmoe.config import Config, check

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 70, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 220),
    "pink": (245, 130, 190),
}
SIZES: tuple[str, ...] = ("small", "large")
SPLITS: tuple[str, ...] = ("train", "val", "test", "comp_test")
Split = Literal["train", "val", "test", "comp_test"]
LabelKind = Literal["largest_shape", "largest_colour", "count", "none"]
Background = Literal["plain", "noise", "gradient"]
BACKGROUND_LEVEL = 20  # grey level of the background; kept far below every object colour

# Scene streams: each (seed, split, index) owns independent streams for the scene and its text.
STREAM_SCENE = 0
STREAM_TEXT = 1


@dataclass
class ShapesConfig(Config):
    """Configuration of the scene world.

    Attributes:
        image_size: side of the square image in pixels.
        min_objects, max_objects: number of objects per scene (inclusive).
        shapes: shapes that may appear (subset of ``SHAPES``).
        colours: colour names that may appear (subset of ``COLOURS``).
        small_size, large_size: object side as a fraction of ``image_size``.
        size_jitter: relative random change of an object's side (0.1 = +-10%).
        large_objects: "one" = exactly one large object per scene (so "the largest object" is
            always clear); "any" = each object is large with probability 1/2.
        background: "plain", "noise" (grey per-pixel noise) or "gradient".
        noise_level: amplitude of background noise/gradient in grey levels.
        occlusion: how much of an object's box any one other object may cover, as a fraction of
            its area (0 = boxes never overlap, the default; 0.3 = up to 30% hidden). Objects are
            drawn in order, so an object covers those before it; boxes stay the full (amodal)
            extent of each shape.
        holdout: (colour, shape) pairs never shown in the train/val splits; the ``comp_test``
            split puts at least one of them in every scene.
        label: the class label: shape or colour of the largest object, number of objects, none.
        num_captions: captions per image (fewer when the scene allows fewer distinct ones).
        caption_positions: the first (canonical) caption also says where each object is, the
            cell of a 3x3 grid that holds its box centre ("a large red circle at the top
            left"): the captions a text-to-image model learns placement from.
        num_questions: question-answer pairs per image (idem).
        seed: base seed of the world.
    """

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    small_size: float = 0.2
    large_size: float = 0.34
    size_jitter: float = 0.1
    large_objects: Literal["one", "any"] = "one"
    background: Background = "plain"
    noise_level: int = 24
    occlusion: float = 0.0
    holdout: tuple[tuple[str, str], ...] = ()
    label: LabelKind = "largest_shape"
    num_captions: int = 3
    caption_positions: bool = False
    num_questions: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        # Lists from YAML/JSON become tuples so the config stays hashable.
        object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "colours", tuple(self.colours))
        object.__setattr__(self, "holdout", tuple(tuple(p) for p in self.holdout))
        _check(self.image_size >= 16, "image_size", self.image_size, "must be >= 16")
        _check(self.min_objects >= 1, "min_objects", self.min_objects, "must be >= 1")
        _check(
            self.min_objects <= self.max_objects <= 9,
            "max_objects",
            self.max_objects,
            f"must be in [min_objects={self.min_objects}, 9]",
        )
        for s in self.shapes:
            _check(s in SHAPES, "shapes", self.shapes, f"unknown shape {s!r}; known: {SHAPES}")
        for c in self.colours:
            _check(
                c in COLOURS,
                "colours",
                self.colours,
                f"unknown colour {c!r}; known: {tuple(COLOURS)}",
            )
        _check(
            len(set(self.shapes)) == len(self.shapes) > 0, "shapes", self.shapes, "need distinct"
        )
        _check(
            len(set(self.colours)) == len(self.colours) > 0,
            "colours",
            self.colours,
            "need distinct",
        )
        _check(
            0.05 <= self.small_size < self.large_size <= 0.5,
            "large_size",
            (self.small_size, self.large_size),
            "need 0.05 <= small_size < large_size <= 0.5",
        )
        _check(
            0 <= self.size_jitter < 0.25, "size_jitter", self.size_jitter, "must be in [0, 0.25)"
        )
        _check(
            self.small_size * (1 + self.size_jitter) < self.large_size * (1 - self.size_jitter),
            "size_jitter",
            self.size_jitter,
            "is so large that a small object could outgrow a large one",
        )
        _check(self.large_objects in ("one", "any"), "large_objects", self.large_objects, "one|any")
        _check(
            self.background in ("plain", "noise", "gradient"),
            "background",
            self.background,
            "must be plain|noise|gradient",
        )
        _check(0 <= self.noise_level <= 60, "noise_level", self.noise_level, "must be in [0, 60]")
        _check(0 <= self.occlusion < 1, "occlusion", self.occlusion, "must be in [0, 1)")
        _check(
            self.label in ("largest_shape", "largest_colour", "count", "none"),
            "label",
            self.label,
            "must be largest_shape|largest_colour|count|none",
        )
        for pair in self.holdout:
            _check(
                len(pair) == 2 and pair[0] in self.colours and pair[1] in self.shapes,
                "holdout",
                self.holdout,
                f"pair {pair!r} is not a (colour, shape) of this config",
            )
        n_pairs = len(self.shapes) * len(self.colours) - len(set(self.holdout))
        _check(
            n_pairs >= self.max_objects,
            "holdout",
            self.holdout,
            f"leaves {n_pairs} colour-shape pairs for training, fewer than max_objects",
        )
        _check(self.num_captions >= 1, "num_captions", self.num_captions, "must be >= 1")
        _check(self.num_questions >= 0, "num_questions", self.num_questions, "must be >= 0")

    @property
    def label_names(self) -> list[str]:
        if self.label == "largest_shape":
            return list(self.shapes)
        if self.label == "largest_colour":
            return list(self.colours)
        if self.label == "count":
            return [str(k) for k in range(1, self.max_objects + 1)]
        return []

    @property
    def box_label_names(self) -> list[str]:
        """Box labels are "colour shape" ("red circle"), in colour-major order."""
        return [f"{c} {s}" for c in self.colours for s in self.shapes]


def _check(ok: bool, name: str, value: Any, why: str) -> None:
    check(ok, f"ShapesConfig.{name}={value!r}: {why}")


@dataclass(frozen=True)
class SceneObject:
    """One object: shape, colour, size class and box ``(x0, y0, x1, y1)``, x1/y1 exclusive."""

    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A full scene description; :func:`vlmoe.data.render.render` draws it deterministically."""

    image_size: int
    objects: tuple[SceneObject, ...]
    background: str = "plain"
    noise_level: int = 0
    noise_seed: int = 0
    flipped: bool = False

    def hflip(self) -> Scene:
        """The mirror image: boxes mirrored, left and right exchanged."""
        S = self.image_size
        objs = tuple(
            SceneObject(o.shape, o.colour, o.size, (S - o.box[2], o.box[1], S - o.box[0], o.box[3]))
            for o in self.objects
        )
        return Scene(S, objs, self.background, self.noise_level, self.noise_seed, not self.flipped)

    def largest(self) -> SceneObject:
        """The object of largest area (unique by construction)."""
        return max(self.objects, key=lambda o: o.area)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objects"] = [{**asdict(o), "box": list(o.box)} for o in self.objects]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        objs = tuple(
            SceneObject(o["shape"], o["colour"], o["size"], tuple(int(v) for v in o["box"]))
            for o in d["objects"]
        )
        return cls(
            int(d["image_size"]),
            objs,
            d.get("background", "plain"),
            int(d.get("noise_level", 0)),
            int(d.get("noise_seed", 0)),
            bool(d.get("flipped", False)),
        )


def split_rng(seed: int, split: str, index: int, stream: int = STREAM_SCENE) -> np.random.Generator:
    """The RNG of one sample: a function of (seed, split, index, stream) only."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    split_id = zlib.crc32(split.encode())
    return np.random.default_rng(
        np.random.SeedSequence([seed & 0xFFFFFFFF, split_id, index, stream])
    )


def allowed_pairs(cfg: ShapesConfig, split: str) -> list[tuple[str, str]]:
    """(colour, shape) pairs that may appear in ``split``: train/val exclude the holdout."""
    pairs = [(c, s) for c in cfg.colours for s in cfg.shapes]
    if split in ("train", "val"):
        held = set(cfg.holdout)
        pairs = [p for p in pairs if p not in held]
    return pairs


@dataclass
class _Layout:
    sides: list[int] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


def _disjoint(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _covered(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Fraction of box ``a``'s area inside box ``b``."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h) / ((a[2] - a[0]) * (a[3] - a[1]))


def _fits(
    box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]], occlusion: float
) -> bool:
    if occlusion == 0:
        return all(_disjoint(box, b) for b in others)
    # Either box may end up on top, so neither may lose more than `occlusion` of its area.
    return all(_covered(box, b) <= occlusion and _covered(b, box) <= occlusion for b in others)


def _place(
    sides: list[int], S: int, rng: np.random.Generator, occlusion: float = 0.0
) -> list[tuple[int, int, int, int]] | None:
    """Square boxes of the given sides, placed largest first, overlapping at most by
    ``occlusion`` of either box's area (0: disjoint); None if stuck."""
    order = sorted(range(len(sides)), key=lambda i: -sides[i])
    boxes: dict[int, tuple[int, int, int, int]] = {}
    for i in order:
        s = sides[i]
        for _ in range(200):
            x0, y0 = (int(v) for v in rng.integers(0, S - s + 1, size=2))
            box = (x0, y0, x0 + s, y0 + s)
            if _fits(box, list(boxes.values()), occlusion):
                boxes[i] = box
                break
        else:
            return None
    return [boxes[i] for i in range(len(sides))]


def _untie_largest(sides: list[int]) -> None:
    """Shrink all but one of the largest sides by a pixel so "the largest object" is one object."""
    top = max(sides)
    for i in [i for i, s in enumerate(sides) if s == top][1:]:
        sides[i] -= 1


def generate_scene(
    seed: int, index: int, cfg: ShapesConfig | None = None, split: Split = "train"
) -> Scene:
    """The scene number ``index`` of ``split`` in the world ``(cfg, seed)``.

    Objects have distinct (colour, shape) pairs, so "the red circle" always names one object,
    and their boxes never overlap unless ``cfg.occlusion`` > 0 (then each box is at most that
    fraction covered). The largest object (by area) is unique.
    """
    cfg = cfg or ShapesConfig()
    rng = split_rng(seed, split, index)
    S = cfg.image_size
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    pairs = allowed_pairs(cfg, split)
    chosen: list[tuple[str, str]] = []
    if split == "comp_test":
        if not cfg.holdout:
            raise ValueError("split 'comp_test' needs ShapesConfig.holdout pairs")
        chosen.append(cfg.holdout[int(rng.integers(len(cfg.holdout)))])
    rest = [p for p in pairs if p not in chosen]
    picks = rng.choice(len(rest), size=n - len(chosen), replace=False)
    chosen += [rest[int(i)] for i in picks]
    order = rng.permutation(n)
    chosen = [chosen[int(i)] for i in order]

    if cfg.large_objects == "one":
        big = int(rng.integers(n))
        sizes = ["large" if i == big else "small" for i in range(n)]
    else:
        sizes = ["large" if rng.random() < 0.5 else "small" for _ in range(n)]
    sides = []
    for size in sizes:
        base = cfg.large_size if size == "large" else cfg.small_size
        jitter = 1 + cfg.size_jitter * (2 * rng.random() - 1)
        sides.append(max(4, round(base * S * jitter)))
    _untie_largest(sides)
    boxes = _place(sides, S, rng, cfg.occlusion)
    while boxes is None:  # rare: shrink the scene by its last object and try again
        if len(chosen) <= max(1, cfg.min_objects):
            raise ValueError(
                f"ShapesConfig: cannot place {len(chosen)} objects in a {S}x{S} image "
                f"(scene {index} of {split}); lower min_objects or the object sizes"
            )
        # Drop the last object, never the held-out pair a comp_test scene must show.
        keep = set(cfg.holdout) if split == "comp_test" else set()
        k = max((i for i, p in enumerate(chosen) if p not in keep), default=len(chosen) - 1)
        del chosen[k], sizes[k], sides[k]
        if "large" not in sizes and cfg.large_objects == "one":
            sizes[0], sides[0] = "large", max(sides) + 1
        _untie_largest(sides)
        boxes = _place(sides, S, rng, cfg.occlusion)

    objects = tuple(
        SceneObject(shape=s, colour=c, size=z, box=b)
        for (c, s), z, b in zip(chosen, sizes, boxes, strict=True)
    )
    return Scene(
        image_size=S,
        objects=objects,
        background=cfg.background,
        noise_level=cfg.noise_level if cfg.background != "plain" else 0,
        noise_seed=int(rng.integers(2**31)),
    )


def scene_label(scene: Scene, cfg: ShapesConfig) -> int | None:
    """The class label of ``scene`` under ``cfg.label`` (index into ``cfg.label_names``)."""
    if cfg.label == "largest_shape":
        return cfg.shapes.index(scene.largest().shape)
    if cfg.label == "largest_colour":
        return cfg.colours.index(scene.largest().colour)
    if cfg.label == "count":
        return len(scene.objects) - 1
    return None
