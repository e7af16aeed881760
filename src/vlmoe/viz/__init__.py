"""PNG plots (matplotlib, Agg, no pyplot state): training curves with dense and MoE runs on
shared axes, expert load per layer split by modality, and the routing of one image's patches
and text tokens per MoE layer (`inspect_model`, behind `vlmoe inspect`)."""

from vlmoe.viz.curves import plot_curves, read_metrics
from vlmoe.viz.expert_load import load_from_results, plot_expert_load, reachable_from_results
from vlmoe.viz.inspect import InspectResult, inspect_model
from vlmoe.viz.routing import plot_patch_routing, token_top1

__all__ = [
    "InspectResult",
    "inspect_model",
    "load_from_results",
    "plot_curves",
    "plot_expert_load",
    "plot_patch_routing",
    "reachable_from_results",
    "read_metrics",
    "token_top1",
]
