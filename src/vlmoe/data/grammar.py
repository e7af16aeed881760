"""Text for scenes: captions, question-answer pairs and referring expressions.

A small template grammar in the spirit of CLEVR (Johnson et al., 2017): every sentence is
computed from the :class:`~vlmoe.data.shapes.Scene` description, so it is true of the image by
construction (the tests recompute every answer independently).

Spatial relations are strict box separations: A is "to the left of" B when A's box ends before
B's begins along x (``A.x1 <= B.x0``); likewise "to the right of", "above", "below". A
horizontal flip exchanges exactly "left" and "right", which :func:`swap_left_right` does on text.

Question types (``QA.kind``): ``colour``, ``shape``, ``count``, ``exist``, ``spatial``,
``compare``. Answers are short strings: a colour or shape name, a digit, yes/no, or one of
left/right/above/below.

Caption types (:func:`caption_kind`): ``listing`` (the canonical caption, every object with
size, colour and shape, left to right; with ``ShapesConfig.caption_positions`` each followed by
its place, the 3x3 grid cell of its box centre: "a large red circle at the top left"),
``counts`` (shapes counted), ``colours`` (colour and shape of each object) and ``relation``
(two objects and where one is). :func:`parse_listing` reads a listing (without places) back
into objects, so a generated caption can be scored attribute by attribute.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import numpy as np

from vlmoe.data.sample import QA, RefExp
from vlmoe.data.shapes import Scene, SceneObject, ShapesConfig, allowed_pairs

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
REL_PHRASE = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
# The 3x3 grid cells of an image, row-major; "left"/"right" are the words a flip exchanges.
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
QUESTION_KINDS = ("colour", "shape", "count", "exist", "spatial", "compare")
CAPTION_KINDS = ("listing", "counts", "colours", "relation")


def answer_vocab(cfg: ShapesConfig) -> list[str]:
    """Every answer a scene question can have under ``cfg``, in a fixed order."""
    digits = [str(k) for k in range(0, cfg.max_objects + 1)]
    return [*cfg.colours, *cfg.shapes, *digits, "yes", "no", "left", "right", "above", "below"]


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ss", "sh", "ch")) else "s")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def relations(a: SceneObject, b: SceneObject) -> set[str]:
    """Which of left/right/above/below hold for ``a`` relative to ``b`` (strict separation)."""
    rels = set()
    if a.box[2] <= b.box[0]:
        rels.add("left")
    if a.box[0] >= b.box[2]:
        rels.add("right")
    if a.box[3] <= b.box[1]:
        rels.add("above")
    if a.box[1] >= b.box[3]:
        rels.add("below")
    return rels


_LR = re.compile(r"\b(left|right)(most)?\b")


def swap_left_right(text: str) -> str:
    """Exchange the words "left" and "right" (and "leftmost"/"rightmost")."""
    return _LR.sub(
        lambda m: ("right" if m.group(1) == "left" else "left") + (m.group(2) or ""), text
    )


def noun_phrase(o: SceneObject, with_size: bool = True) -> str:
    words = [o.size, o.colour, o.shape] if with_size else [o.colour, o.shape]
    return f"{article(words[0])} {' '.join(words)}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _count(objs: tuple[SceneObject, ...], pred: Callable[[SceneObject], bool]) -> int:
    return sum(1 for o in objs if pred(o))


def desc_without_colour(o: SceneObject, objs: tuple[SceneObject, ...]) -> str | None:
    """A definite description of ``o`` that does not say its colour, if one is unique."""
    if _count(objs, lambda x: x.shape == o.shape) == 1:
        return f"the {o.shape}"
    if _count(objs, lambda x: (x.shape, x.size) == (o.shape, o.size)) == 1:
        return f"the {o.size} {o.shape}"
    return None


def desc_without_shape(o: SceneObject, objs: tuple[SceneObject, ...]) -> str | None:
    """A definite description of ``o`` that does not say its shape, if one is unique."""
    if _count(objs, lambda x: x.colour == o.colour) == 1:
        return f"the {o.colour} object"
    if _count(objs, lambda x: (x.colour, x.size) == (o.colour, o.size)) == 1:
        return f"the {o.size} {o.colour} object"
    return None


def desc_full(o: SceneObject) -> str:
    """ "the red circle": unique because a scene never repeats a (colour, shape) pair."""
    return f"the {o.colour} {o.shape}"


def _count_words(objs: tuple[SceneObject, ...]) -> str:
    counts = Counter(o.shape for o in objs)
    parts = [
        f"{article(s)} {s}" if k == 1 else f"{NUMBER_WORDS[k]} {plural(s)}"
        for s, k in sorted(counts.items())
    ]
    return _join(parts)


def position_cell(x: float, y: float, image_size: int) -> int:
    """The index into :data:`POSITIONS` of the 3x3 grid cell that holds the point (x, y)."""
    row = min(2, max(0, int(3 * y / image_size)))
    col = min(2, max(0, int(3 * x / image_size)))
    return 3 * row + col


def position_phrase(cell: int) -> str:
    """ "at the top left", "on the left", "in the centre", ...: where an object in grid cell
    ``cell`` is."""
    name = POSITIONS[cell]
    preposition = {"centre": "in", "left": "on", "right": "on"}.get(name, "at")
    return f"{preposition} the {name}"


def _placed(o: SceneObject, image_size: int) -> str:
    return f"{noun_phrase(o)} {position_phrase(position_cell(*o.centre, image_size))}"


def listing(scene: Scene, positions: bool = False) -> str:
    """The canonical caption: every object with size, colour and shape (and, with
    `positions`, its grid cell), left to right (by box centre; objects with equal centres keep
    the scene's order)."""
    objs = scene.objects
    by_x = sorted(objs, key=lambda o: o.centre[0])
    words = [_placed(o, scene.image_size) if positions else noun_phrase(o) for o in by_x]
    if len(objs) == 1:
        return words[0]
    return f"{NUMBER_WORDS[len(objs)]} objects: {_join(words)}"


def make_captions(
    scene: Scene, rng: np.random.Generator, num: int, positions: bool = False
) -> list[str]:
    """``num`` distinct captions; the first lists every object (the canonical caption, with
    each object's grid cell when `positions`)."""
    objs = scene.objects
    full = listing(scene, positions)
    candidates = [_count_words(objs)]
    candidates.append(_join([noun_phrase(o, with_size=False) for o in objs]))
    for a in objs:
        for b in objs:
            if a is not b:
                for r in sorted(relations(a, b)):
                    candidates.append(f"{noun_phrase(a)} {REL_PHRASE[r]} {noun_phrase(b)}")
    candidates = [c for c in dict.fromkeys(candidates) if c != full]
    take = min(num - 1, len(candidates))
    picks = rng.choice(len(candidates), size=take, replace=False) if take > 0 else []
    return [full, *(candidates[int(i)] for i in picks)]


def _colour_shape_questions(objs: tuple[SceneObject, ...]) -> tuple[list[QA], list[QA]]:
    colour, shape = [], []
    for o in objs:
        d = desc_without_colour(o, objs)
        if d is not None:
            colour.append(QA(f"what colour is {d}?", o.colour, "colour"))
        d = desc_without_shape(o, objs)
        if d is not None:
            shape.append(QA(f"what shape is {d}?", o.shape, "shape"))
    return colour, shape


def _count_questions(objs: tuple[SceneObject, ...], cfg: ShapesConfig) -> list[QA]:
    qs = [QA("how many objects are there?", str(len(objs)), "count")]
    for c in cfg.colours:
        qs.append(
            QA(
                f"how many {c} objects are there?",
                str(sum(o.colour == c for o in objs)),
                "count",
            )
        )
    for s in cfg.shapes:
        qs.append(
            QA(
                f"how many {plural(s)} are there?",
                str(sum(o.shape == s for o in objs)),
                "count",
            )
        )
    return qs


def _exist_questions(
    objs: tuple[SceneObject, ...], cfg: ShapesConfig, split: str, rng: np.random.Generator
) -> list[QA]:
    present = {(o.colour, o.shape) for o in objs}
    yes = [QA(f"is there {article(c)} {c} {s}?", "yes", "exist") for c, s in sorted(present)]
    # "no" questions only name pairs this split may show, so train text never names a held-out pair.
    absent = [p for p in allowed_pairs(cfg, split) if p not in present]
    picks = rng.choice(len(absent), size=min(len(yes), len(absent)), replace=False)
    no = [
        QA(f"is there {article(absent[i][0])} {absent[i][0]} {absent[i][1]}?", "no", "exist")
        for i in picks
    ]
    shapes_present = {o.shape for o in objs}
    for s in cfg.shapes:
        no_or_yes = "yes" if s in shapes_present else "no"
        (yes if no_or_yes == "yes" else no).append(
            QA(f"is there {article(s)} {s}?", no_or_yes, "exist")
        )
    return yes + no


def _pair_questions(objs: tuple[SceneObject, ...]) -> tuple[list[QA], list[QA]]:
    spatial, compare = [], []
    for i, a in enumerate(objs):
        for j, b in enumerate(objs):
            if i == j:
                continue
            da, db = desc_full(a), desc_full(b)
            rels = relations(a, b)
            for r in sorted(rels):
                spatial.append(QA(f"is {da} {REL_PHRASE[r]} {db}?", "yes", "spatial"))
                if OPPOSITE[r] not in rels:
                    spatial.append(QA(f"is {da} {REL_PHRASE[OPPOSITE[r]]} {db}?", "no", "spatial"))
            if len(rels) == 1:
                (r,) = rels
                spatial.append(QA(f"where is {da} relative to {db}?", r, "spatial"))
            if a.size != b.size:
                answer = "yes" if a.size == "large" else "no"
                compare.append(QA(f"is {da} larger than {db}?", answer, "compare"))
                compare.append(
                    QA(f"is {da} smaller than {db}?", "no" if answer == "yes" else "yes", "compare")
                )
            if i < j:
                same = "yes" if a.size == b.size else "no"
                compare.append(QA(f"are {da} and {db} the same size?", same, "compare"))
                na, nb = desc_without_colour(a, objs), desc_without_colour(b, objs)
                if na is not None and nb is not None:
                    same = "yes" if a.colour == b.colour else "no"
                    compare.append(QA(f"is {na} the same colour as {nb}?", same, "compare"))
    return spatial, compare


def _more_questions(objs: tuple[SceneObject, ...], cfg: ShapesConfig) -> list[QA]:
    qs = []
    counts = Counter(o.shape for o in objs)
    present = sorted(counts)
    for s in present:
        for t in cfg.shapes:
            if s != t:
                answer = "yes" if counts[s] > counts.get(t, 0) else "no"
                qs.append(QA(f"are there more {plural(s)} than {plural(t)}?", answer, "compare"))
    return qs


def make_questions(
    scene: Scene, cfg: ShapesConfig, rng: np.random.Generator, num: int, split: str = "train"
) -> list[QA]:
    """Up to ``num`` distinct questions, spread over the question kinds in random order."""
    objs = scene.objects
    colour, shape = _colour_shape_questions(objs)
    spatial, compare = _pair_questions(objs)
    compare += _more_questions(objs, cfg)
    pools = {
        "colour": colour,
        "shape": shape,
        "count": _count_questions(objs, cfg),
        "exist": _exist_questions(objs, cfg, split, rng),
        "spatial": spatial,
        "compare": compare,
    }
    pools = {k: list(dict.fromkeys(v)) for k, v in pools.items() if v}
    kinds = [list(pools)[int(i)] for i in rng.permutation(len(pools))]
    out: list[QA] = []
    seen: set[str] = set()
    while len(out) < num and any(pools.values()):
        for k in kinds:
            pool = pools[k]
            if not pool or len(out) >= num:
                continue
            qa = pool.pop(int(rng.integers(len(pool))))
            if qa.question not in seen:
                seen.add(qa.question)
                out.append(qa)
    return out


def make_refs(scene: Scene) -> list[RefExp]:
    """Referring expressions naming exactly one object each; ``box`` indexes ``scene.objects``."""
    objs = scene.objects
    refs: list[RefExp] = []
    largest = scene.largest()
    for i, o in enumerate(objs):
        refs.append(RefExp(desc_full(o), i))
        for d in (desc_without_colour(o, objs), desc_without_shape(o, objs)):
            if d is not None:
                refs.append(RefExp(d, i))
        if len(objs) > 1 and o is largest:
            refs.append(RefExp("the largest object", i))
    for j, b in enumerate(objs):
        for r, phrase in REL_PHRASE.items():
            hits = [i for i, a in enumerate(objs) if i != j and r in relations(a, b)]
            if len(hits) == 1:
                refs.append(RefExp(f"the object {phrase} {desc_full(b)}", hits[0]))
    return list(dict.fromkeys(refs))


# ----------------------------------------------------------------------------- reading captions

_WORD = r"[a-z]+"
_NP = re.compile(rf"^(?:a|an) (small|large) ({_WORD}) ({_WORD})$")


def parse_listing(text: str) -> list[tuple[str, str, str]] | None:
    """The (size, colour, shape) of each object a listing caption names, left to right, or
    None when ``text`` is not a well-formed listing (the inverse of the first caption of
    :func:`make_captions`). Words are not checked against a world's colours and shapes."""
    text = " ".join(text.lower().split())
    count = None
    head, sep, rest = text.partition(" objects: ")
    if sep:
        if head not in NUMBER_WORDS:
            return None
        count, text = NUMBER_WORDS.index(head), rest
    parts = text.split(", ")
    last = parts.pop().split(" and ")
    phrases = parts + last
    if count is None and len(phrases) != 1:
        return None
    objects = []
    for phrase in phrases:
        m = _NP.match(phrase)
        if m is None or article(m.group(1)) != phrase.split(" ", 1)[0]:
            return None
        objects.append((m.group(1), m.group(2), m.group(3)))
    if count is not None and (count != len(objects) or count < 2 or len(last) != 2):
        return None
    return objects


def caption_kind(text: str) -> str:
    """Which of :data:`CAPTION_KINDS` a scene caption is (from its form alone)."""
    if parse_listing(text) is not None:
        return "listing"
    if any(f" {phrase} " in f" {text} " for phrase in REL_PHRASE.values()):
        return "relation"
    # "a red circle and two squares" never happens: colour lists name one object per phrase.
    first = re.split(r", | and ", text)[0].split()
    return "colours" if len(first) == 3 and first[0] in ("a", "an") else "counts"
