"""vlmoe models: ViT, text transformer, the three vision-language architectures (fusion,
contrastive, decoder) and a diffusion transformer (DiT), built on one transformer stack or block
design whose feed-forward layers are dense or MoE by config."""

from vlmoe.models.base import PretrainedModel, architectures, count_parameters
from vlmoe.models.checkpoint import CheckpointError, load_model
from vlmoe.models.config import (
    ContrastiveConfig,
    DecoderConfig,
    DetectionConfig,
    FusionConfig,
    TextConfig,
    TransformerConfig,
    ViTConfig,
)
from vlmoe.models.contrastive import ContrastiveModel
from vlmoe.models.decoder import Decoder
from vlmoe.models.detection import DetectionModel
from vlmoe.models.dit import DiT, DiTConfig, DiTOutput
from vlmoe.models.freeze import freeze, set_trainable, unfreeze
from vlmoe.models.fusion import FusionModel
from vlmoe.models.generation import generate
from vlmoe.models.outputs import (
    ContrastiveOutput,
    DecoderOutput,
    DetectionOutput,
    FusionOutput,
    TextOutput,
    ViTOutput,
)
from vlmoe.models.text import TextTransformer
from vlmoe.models.transformer import Transformer
from vlmoe.models.upcycle import upcycle_model
from vlmoe.models.vit import ViT

# The built-in presets register themselves once every architecture above is defined.
from vlmoe.models import presets  # noqa: E402, F401  (isort: skip)
from vlmoe.models.registry import (  # noqa: E402
    create_model,
    get_preset,
    list_presets,
    preset_config,
    register_preset,
)

__all__ = [
    "CheckpointError",
    "ContrastiveConfig",
    "ContrastiveModel",
    "ContrastiveOutput",
    "Decoder",
    "DecoderConfig",
    "DecoderOutput",
    "DiT",
    "DiTConfig",
    "DiTOutput",
    "DetectionConfig",
    "DetectionModel",
    "DetectionOutput",
    "FusionConfig",
    "FusionModel",
    "FusionOutput",
    "PretrainedModel",
    "TextConfig",
    "TextOutput",
    "TextTransformer",
    "Transformer",
    "TransformerConfig",
    "ViT",
    "ViTConfig",
    "ViTOutput",
    "architectures",
    "count_parameters",
    "freeze",
    "generate",
    "create_model",
    "get_preset",
    "list_presets",
    "load_model",
    "preset_config",
    "register_preset",
    "set_trainable",
    "unfreeze",
    "upcycle_model",
]
