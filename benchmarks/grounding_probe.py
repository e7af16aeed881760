"""Linear probes of a detector backbone's final patch features on held-out scenes: can a
least-squares read-out find where a patch is (its grid row and column) and the colour of the
object under it? The grounding decoder reads these features (`benchmarks/grounding.py`), so
what they hold decides what the language model must learn itself.

    OMP_NUM_THREADS=1 python benchmarks/grounding_probe.py runs/grounding/detector-seed0/model
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from grounding import SCENES

from vlmoe.data.shapes_data import ShapesDataset
from vlmoe.data.transforms import preprocess_image
from vlmoe.models.checkpoint import load_model


def least_squares(x_NF: torch.Tensor, y_NT: torch.Tensor, train: int) -> torch.Tensor:
    """Fit y = [x, 1] W on the first `train` rows; predictions for the rest."""
    a_NF = torch.cat([x_NF, torch.ones(len(x_NF), 1)], 1)
    w = torch.linalg.lstsq(a_NF[:train], y_NT[:train]).solution
    return a_NF[train:] @ w


@torch.no_grad()
def probe(directory: str, num_scenes: int = 300) -> dict:
    det = load_model(directory).eval()
    ds = ShapesDataset(SCENES, "test", num_scenes)
    images = torch.stack([preprocess_image(np.asarray(ds[i].image), 64) for i in range(len(ds))])
    feats_BND, _ = det.backbone.forward_features(images)
    feats_BND = feats_BND[:, det.backbone.num_prefix_tokens :]
    B, N, D = feats_BND.shape
    rows, cols = det.backbone.grid_size
    cell_N2 = torch.stack([torch.arange(N) // cols, torch.arange(N) % cols], -1).float()
    train = (B * 3 // 4) * N  # scenes, not patches, are held out
    pred = least_squares(feats_BND.reshape(-1, D), cell_N2.repeat(B, 1), train)
    true = cell_N2.repeat(B, 1)[train:]
    r2 = 1 - ((pred - true) ** 2).sum(0) / ((true - true.mean(0)) ** 2).sum(0)
    colours = list(SCENES.colours)
    x, y = [], []
    patch = 64 // rows
    for i in range(B):
        for b in ds[i].boxes:
            cx, cy = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
            x.append(feats_BND[i, int(cy // patch) * cols + int(cx // patch)])
            y.append(colours.index(b.label.split()[0]))
    x_MD, y_M = torch.stack(x), torch.tensor(y)
    split = len(y_M) * 7 // 10
    onehot = torch.nn.functional.one_hot(y_M, len(colours)).float()
    colour_acc = (least_squares(x_MD, onehot, split).argmax(1) == y_M[split:]).float().mean()
    return {
        "position_r2_row_col": [round(float(v), 3) for v in r2],
        "position_mean_abs_error_patches": round(float((pred - true).abs().mean()), 3),
        "colour_accuracy": round(float(colour_acc), 3),
        "num_objects": len(y_M),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("detector", help="a saved detector's directory")
    p.add_argument("--num-scenes", type=int, default=300)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(probe(args.detector, args.num_scenes)))


if __name__ == "__main__":
    main()
