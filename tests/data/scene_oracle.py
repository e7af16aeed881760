"""An independent checker for scene texts: parses each sentence and recomputes its truth.

It shares no code with vlmoe.data.grammar: relations are recomputed from boxes, descriptions are
resolved by matching words against object attributes, and every sentence template is parsed
with its own regular expression. A sentence that matches no template is an error too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

NUM = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}


@dataclass
class Obj:
    shape: str
    colour: str
    size: str
    box: tuple[float, float, float, float]


def objs_from_sample(sample) -> list[Obj]:
    """Objects from the sample's scene attributes and the sample's *current* boxes."""
    scene = sample.meta["scene"]
    return [
        Obj(o.shape, o.colour, o.size, (b.x0, b.y0, b.x1, b.y1))
        for o, b in zip(scene.objects, sample.boxes, strict=True)
    ]


class Oracle:
    def __init__(self, objs: list[Obj], shapes, colours):
        self.objs = objs
        self.shapes = list(shapes)
        self.colours = list(colours)
        self.plural = {s + ("es" if s.endswith("s") else "s"): s for s in self.shapes}

    # --- relations, from boxes ---
    @staticmethod
    def rel(a: Obj, b: Obj, r: str) -> bool:
        return {
            "left": a.box[2] <= b.box[0],
            "right": a.box[0] >= b.box[2],
            "above": a.box[3] <= b.box[1],
            "below": a.box[1] >= b.box[3],
        }[r]

    def resolve(self, desc: str) -> Obj:
        """'the [size] [colour] shape|object' -> the unique matching object."""
        words = desc.split()
        assert words[0] == "the", desc
        words = words[1:]
        if words == ["largest", "object"]:
            areas = [(o.box[2] - o.box[0]) * (o.box[3] - o.box[1]) for o in self.objs]
            assert areas.count(max(areas)) == 1
            return self.objs[int(np.argmax(areas))]
        m = re.fullmatch(r"the object (to the left of|to the right of|above|below) (the .+)", desc)
        if m:
            anchor = self.resolve(m.group(2))
            r = self._rel_word(m.group(1))
            hits = [o for o in self.objs if o is not anchor and self.rel(o, anchor, r)]
            assert len(hits) == 1, desc
            return hits[0]
        hits = [o for o in self.objs if self._matches(o, words)]
        assert len(hits) == 1, f"{desc!r} matches {len(hits)} objects"
        return hits[0]

    def _matches(self, o: Obj, words: list[str]) -> bool:
        for w in words:
            if w in ("small", "large") and o.size != w:
                return False
            if w in self.colours and o.colour != w:
                return False
            if w in self.shapes and o.shape != w:
                return False
            if w not in ("small", "large", "object", *self.colours, *self.shapes):
                raise AssertionError(f"unknown word {w!r}")
        return True

    @staticmethod
    def _rel_word(phrase: str) -> str:
        return {
            "to the left of": "left",
            "to the right of": "right",
            "above": "above",
            "below": "below",
        }[phrase]

    # --- questions ---
    def answer(self, q: str) -> str:
        yn = lambda b: "yes" if b else "no"  # noqa: E731
        REL = r"(to the left of|to the right of|above|below)"
        D = r"(the [a-z ]+?)"
        if m := re.fullmatch(rf"what colour is {D}\?", q):
            return self.resolve(m.group(1)).colour
        if m := re.fullmatch(rf"what shape is {D}\?", q):
            return self.resolve(m.group(1)).shape
        if q == "how many objects are there?":
            return str(len(self.objs))
        if m := re.fullmatch(r"how many ([a-z]+) objects are there\?", q):
            return str(sum(o.colour == m.group(1) for o in self.objs))
        if m := re.fullmatch(r"how many ([a-z]+) are there\?", q):
            return str(sum(o.shape == self.plural[m.group(1)] for o in self.objs))
        if m := re.fullmatch(r"is there an? ([a-z]+) ([a-z]+)\?", q):
            return yn(any((o.colour, o.shape) == (m.group(1), m.group(2)) for o in self.objs))
        if m := re.fullmatch(r"is there an? ([a-z]+)\?", q):
            return yn(any(o.shape == m.group(1) for o in self.objs))
        if m := re.fullmatch(rf"is {D} {REL} {D}\?", q):
            a, b = self.resolve(m.group(1)), self.resolve(m.group(3))
            return yn(self.rel(a, b, self._rel_word(m.group(2))))
        if m := re.fullmatch(rf"where is {D} relative to {D}\?", q):
            a, b = self.resolve(m.group(1)), self.resolve(m.group(2))
            rels = [r for r in ("left", "right", "above", "below") if self.rel(a, b, r)]
            assert len(rels) == 1, q
            return rels[0]
        if m := re.fullmatch(rf"is {D} (larger|smaller) than {D}\?", q):
            a, b = self.resolve(m.group(1)), self.resolve(m.group(3))
            area = lambda o: (o.box[2] - o.box[0]) * (o.box[3] - o.box[1])  # noqa: E731
            return yn(area(a) > area(b) if m.group(2) == "larger" else area(a) < area(b))
        if m := re.fullmatch(rf"are {D} and {D} the same size\?", q):
            return yn(self.resolve(m.group(1)).size == self.resolve(m.group(2)).size)
        if m := re.fullmatch(rf"is {D} the same colour as {D}\?", q):
            return yn(self.resolve(m.group(1)).colour == self.resolve(m.group(2)).colour)
        if m := re.fullmatch(r"are there more ([a-z]+) than ([a-z]+)\?", q):
            a, b = self.plural[m.group(1)], self.plural[m.group(2)]
            return yn(sum(o.shape == a for o in self.objs) > sum(o.shape == b for o in self.objs))
        raise AssertionError(f"no template parses {q!r}")

    # --- captions ---
    def _np(self, text: str) -> tuple[str, ...]:
        words = text.split()
        assert words[0] in ("a", "an"), text
        assert (words[0] == "an") == (words[1][0] in "aeiou"), f"article in {text!r}"
        return tuple(words[1:])

    def _obj_tuple(self, o: Obj, with_size: bool) -> tuple[str, ...]:
        return (o.size, o.colour, o.shape) if with_size else (o.colour, o.shape)

    def check_caption(self, c: str) -> None:
        NP = r"(an? [a-z ]+?)"
        items = lambda s: re.split(r", | and ", s)  # noqa: E731
        if m := re.fullmatch(r"([a-z]+) objects: (.+)", c):
            assert NUM[m.group(1)] == len(self.objs)
            got = sorted(self._np(p) for p in items(m.group(2)))
            assert got == sorted(self._obj_tuple(o, True) for o in self.objs), c
            return
        if m := re.fullmatch(rf"{NP} (to the left of|to the right of|above|below) {NP}", c):
            a, b = self._np(m.group(1)), self._np(m.group(3))
            oa = [o for o in self.objs if self._obj_tuple(o, True) == a]
            ob = [o for o in self.objs if self._obj_tuple(o, True) == b]
            assert len(oa) == 1 and len(ob) == 1, c
            assert self.rel(oa[0], ob[0], self._rel_word(m.group(2))), c
            return
        parts = items(c)
        if all(re.fullmatch(r"an? [a-z]+ [a-z]+", p) for p in parts) and all(
            p.split()[-1] in self.shapes and p.split()[1] in self.colours for p in parts
        ):
            got = sorted(self._np(p) for p in parts)
            assert got == sorted(self._obj_tuple(o, False) for o in self.objs), c
            return
        if len(self.objs) == 1 and re.fullmatch(r"an? [a-z]+ [a-z]+ [a-z]+", c):
            assert self._np(c) == self._obj_tuple(self.objs[0], True), c
            return
        counts = {}
        for p in parts:
            w = p.split()
            if w[0] in ("a", "an"):
                assert len(w) == 2 and w[1] in self.shapes, c
                counts[w[1]] = 1
            else:
                assert NUM[w[0]] >= 2 and w[1] in self.plural, c
                counts[self.plural[w[1]]] = NUM[w[0]]
        real = {}
        for o in self.objs:
            real[o.shape] = real.get(o.shape, 0) + 1
        assert counts == real, c


def check_pixels(image: np.ndarray, objs: list[Obj], colours: dict) -> None:
    """Each object's colour fills its box tightly; outside all boxes there is only background."""
    outside = np.ones(image.shape[:2], dtype=bool)
    for o in objs:
        x0, y0, x1, y1 = (int(v) for v in o.box)
        rgb = np.array(colours[o.colour], dtype=np.uint8)
        region = image[y0:y1, x0:x1]
        mask = (region == rgb).all(axis=2)
        cy, cx = (y1 - y0) // 2, (x1 - x0) // 2
        assert mask[cy, cx], f"centre of {o} is not {o.colour}"
        ys, xs = np.nonzero(mask)
        assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (0, 0, y1 - y0, x1 - x0), o
        assert mask.mean() > 0.25, o
        outside[y0:y1, x0:x1] = False
    for rgb in colours.values():
        assert not (image[outside] == np.array(rgb, dtype=np.uint8)).all(axis=1).any()
