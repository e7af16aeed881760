"""A sparse Mixture-of-Experts MNIST classifier that is actually sparse.

The article behind vlmoe shows a "SparseMoE" MNIST model that runs every expert on every
input, has no router, and feeds its output layer a Python list. This script does what it
meant, with vlmoe's pieces:

- `vlmoe.moe.MoELayer`: a softmax router picks the top 2 of 8 SwiGLU experts for each token
  (each of the 7x7 feature-map positions of a small conv stem), and only those 2 run;
- `vlmoe.train.Trainer`: AdamW + warm-up/cosine, with the Switch load-balance loss (0.01) and
  the router z-loss (0.001) added by default and logged on their own;
- the same network with one dense MLP of equal active parameters, for comparison.

Run:  python examples/mnist_sparse_moe.py [--epochs 12] [--out runs/demo-mnist]
(the same as `vlmoe demo mnist`). The model and loop are in `vlmoe/recipes/demos/mnist.py`.
"""

from __future__ import annotations

import argparse
import logging

from vlmoe.recipes.demos.mnist import DEFAULT_EPOCHS, format_results, run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--out", default="runs/demo-mnist")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    results = run(args.out, epochs=args.epochs)
    print(format_results(results))


if __name__ == "__main__":
    main()
