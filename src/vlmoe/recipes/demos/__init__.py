"""Runnable demonstrations behind `vlmoe demo`: the scene-world comparison and MNIST."""
