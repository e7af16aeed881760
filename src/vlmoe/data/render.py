"""Drawing scenes: :func:`render` turns a :class:`~vlmoe.data.shapes.Scene` into pixels.

Shapes are drawn with PIL ``ImageDraw`` in flat colours without anti-aliasing, each filling its
box exactly (its tight bounding box is the scene box), so a pixel inside an object has exactly
the object's colour; background noise is grey and stays below every object colour. Rendering is
a pure function of the scene (noise comes from ``scene.noise_seed``).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from vlmoe.data.shapes import BACKGROUND_LEVEL, COLOURS, Scene, SceneObject


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """The outline of ``shape`` in the unit square [0, 1]^2, touching all four sides."""
    if shape == "triangle":
        return [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "diamond":
        return [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        # Stretch to fill the unit square so the drawn star's bounding box is the scene box.
        return [
            ((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys)))
            for x, y in pts
        ]
    if shape == "cross":
        a, b = 1 / 3, 2 / 3
        return [
            (a, 0),
            (b, 0),
            (b, a),
            (1, a),
            (1, b),
            (b, b),
            (b, 1),
            (a, 1),
            (a, b),
            (0, b),
            (0, a),
            (a, a),
        ]
    raise ValueError(f"no polygon for shape {shape!r}")


def draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    """Draw ``obj`` filling its box (x1/y1 exclusive, so the last pixel is x1 - 1)."""
    x0, y0, x1, y1 = obj.box
    fill = COLOURS[obj.colour]
    w, h = x1 - 1 - x0, y1 - 1 - y0
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    else:
        pts = [(x0 + u * w, y0 + v * h) for u, v in _unit_polygon(obj.shape)]
        draw.polygon(pts, fill=fill)


def render_background(scene: Scene) -> np.ndarray:
    """The (S, S, 3) uint8 background of ``scene``."""
    S = scene.image_size
    base = np.full((S, S, 3), BACKGROUND_LEVEL, dtype=np.int16)
    if scene.background == "noise" and scene.noise_level > 0:
        rng = np.random.default_rng(scene.noise_seed)
        base += rng.integers(0, scene.noise_level + 1, size=(S, S, 1), dtype=np.int16)
    elif scene.background == "gradient" and scene.noise_level > 0:
        ramp = np.linspace(0, scene.noise_level, S).round().astype(np.int16)
        base += ramp[:, None, None] if scene.noise_seed % 2 == 0 else ramp[None, :, None]
    return base.clip(0, 255).astype(np.uint8)


def render(scene: Scene) -> np.ndarray:
    """Draw ``scene``. Returns a (S, S, 3) uint8 array."""
    img = Image.fromarray(render_background(scene))
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        draw_object(draw, obj)
    return np.asarray(img, dtype=np.uint8).copy()
