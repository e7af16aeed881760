"""Boxes as text: location tokens for grounding and detection by generation.

As in Pix2Seq (Chen et al. 2022) and PaliGemma (Beyer et al. 2024), a box is four tokens of a
quantized coordinate, ``<locY0><locX0><locY1><locX1>`` (PaliGemma's y-first order), each
``<locK>`` meaning bin K of ``num_bins`` equal bins over the image side; a labelled box is
followed by its label ("<loc012><loc003><loc040><loc030> red circle"), several boxes are joined
by " ; ". The tokens are added to the tokenizer as ordinary (non-special) tokens, so they
survive decoding, and they are saved with it in ``tokenizer.json``; `location_bins` reads the
vocabulary back from a loaded tokenizer.

Bin K covers ``[K / num_bins, (K + 1) / num_bins)`` of the side; a box edge decodes to the
middle of its bin, so the round trip moves an edge by at most half a bin.

Prompts of the grounding task (`grounding_pairs`): "detect <box label>" for every box of a
scene (answer: its boxes, each with its label) and "locate <referring expression>" for every
referring expression (answer: its one box).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tokenizers import AddedToken

from vlmoe.data.sample import Sample
from vlmoe.data.tokenizer import Tokenizer

_LOC = re.compile(r"<loc(\d+)>")
_BOX = re.compile(r"((?:\s*<loc\d+>){4})([^<;]*)")


def location_token(k: int, num_bins: int) -> str:
    width = len(str(num_bins - 1))
    return f"<loc{k:0{width}d}>"


def add_location_tokens(tokenizer: Tokenizer, num_bins: int) -> list[int]:
    """Add ``<loc0>`` .. ``<loc{num_bins-1}>`` (zero-padded) to ``tokenizer``; their ids.

    Raises ValueError if the tokenizer already has a different location vocabulary.
    """
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    have = location_bins(tokenizer)
    if have not in (None, num_bins):
        raise ValueError(f"tokenizer already has {have} location bins; cannot add {num_bins}")
    names = [location_token(k, num_bins) for k in range(num_bins)]
    if have is None:
        tokenizer.backend.add_tokens(
            [AddedToken(n, single_word=False, normalized=False, special=False) for n in names]
        )
    return [tokenizer.token_to_id(n) for n in names]


def location_bins(tokenizer: Tokenizer) -> int | None:
    """Number of location bins the tokenizer holds (None when it has none)."""
    locs = [t for t in tokenizer.backend.get_vocab(with_added_tokens=True) if _LOC.fullmatch(t)]
    return len(locs) or None


def quantize(v: float, num_bins: int) -> int:
    """Bin of a normalized coordinate ``v`` in [0, 1] (1.0 goes to the last bin)."""
    return min(num_bins - 1, max(0, int(v * num_bins)))


def box_to_text(box: Sequence[float], num_bins: int, label: str | None = None) -> str:
    """Normalized xyxy box -> "<locY0><locX0><locY1><locX1>" (+ " label")."""
    x0, y0, x1, y1 = box
    # x1/y1 are exclusive edges: the last covered coordinate decides the bin.
    eps = 0.5 / (num_bins * 1000)
    bins = (
        quantize(y0, num_bins),
        quantize(x0, num_bins),
        quantize(y1 - eps, num_bins),
        quantize(x1 - eps, num_bins),
    )
    text = "".join(location_token(k, num_bins) for k in bins)
    return f"{text} {label}" if label else text


def text_to_boxes(text: str, num_bins: int) -> list[tuple[tuple[float, float, float, float], str]]:
    """Every "<loc>x4 label" group in ``text`` -> (normalized xyxy box, label); the box edges are
    the outer edges of the decoded bins. Malformed groups (fewer than 4 tokens) are skipped."""
    out = []
    for locs, label in _BOX.findall(text):
        y0, x0, y1, x1 = (min(int(k), num_bins - 1) for k in _LOC.findall(locs))
        box = (x0 / num_bins, y0 / num_bins, (x1 + 1) / num_bins, (y1 + 1) / num_bins)
        out.append((box, label.strip()))
    return out


def grounding_pairs(sample: Sample, num_bins: int) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of a sample with boxes and referring expressions; boxes are
    normalized by the sample's image size."""
    H, W = sample.image_hw
    norm = [(b.x0 / W, b.y0 / H, b.x1 / W, b.y1 / H) for b in sample.boxes]
    pairs = []
    for label in dict.fromkeys(b.label for b in sample.boxes):
        answer = " ; ".join(
            box_to_text(n, num_bins, b.label)
            for n, b in zip(norm, sample.boxes)
            if b.label == label
        )
        pairs.append((f"detect {label}", answer))
    for ref in sample.refs:
        pairs.append((f"locate {ref.text}", box_to_text(norm[ref.box], num_bins)))
    return pairs
