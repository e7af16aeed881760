"""The sparse MoE core: routers, dispatch/combine, stacked experts, losses, stats, upcycling."""

from vlmoe.config import MoEConfig
from vlmoe.moe.dispatch import Dispatcher, DispatchPlan
from vlmoe.moe.experts import Experts
from vlmoe.moe.layer import MoEAux, MoELayer, moe_layers, update_balance_bias
from vlmoe.moe.losses import entropy_losses, load_balance_loss, z_loss
from vlmoe.moe.router import ExpertChoiceRouter, RouterOutput, SoftRouter, TopKRouter
from vlmoe.moe.upcycle import upcycle_mlp

__all__ = [
    "DispatchPlan",
    "Dispatcher",
    "ExpertChoiceRouter",
    "Experts",
    "MoEAux",
    "MoEConfig",
    "MoELayer",
    "RouterOutput",
    "SoftRouter",
    "TopKRouter",
    "entropy_losses",
    "load_balance_loss",
    "moe_layers",
    "update_balance_bias",
    "upcycle_mlp",
    "z_loss",
]
