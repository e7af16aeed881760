"""Recipes: runs end to end on top of the library. `run` prepares, trains and evaluates a run
from a `RunConfig` (what `vlmoe train` / `vlmoe eval` call); `demos` are the demos."""
