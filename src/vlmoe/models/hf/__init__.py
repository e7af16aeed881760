"""Pretrained Hugging Face models in vlmoe, and vlmoe language models back in that layout.

- `import_model(dir)`: a local Hugging Face directory (config.json + safetensors, sharded too)
  as a vlmoe model: decoder LMs (Llama, Mistral, Qwen2, Mixtral, Qwen2-MoE, Phi) as a
  `TextTransformer`; vision towers (CLIP, SigLIP, ViT) as a `ViT`; BERT-style text encoders
  (MiniLM) as a bidirectional `TextTransformer`. The tokenizer in the directory comes along.
- `compose_decoder(vision_dir, text_dir)`: MoE-LLaVA's starting point, a `Decoder` whose
  vision tower and LM are pretrained, with a fresh projector; `compose_contrastive` and
  `compose_fusion` start a two-tower contrastive model's text tower, or a fusion encoder, from a
  pretrained BERT / MiniLM; with `vision="efficientnet-lite0"` their image tokens are
  EfficientNet-Lite0's ImageNet features (`load_lite0`: the package's pickled `.pth` read by
  `vlmoe.torch_files`, never unpickled). Then `vlmoe.models.upcycle_model` turns FFNs into experts.
- `export_model(model, dir)`: a Llama-, Qwen2-, Mixtral- or Qwen2-MoE-shaped vlmoe LM (or a
  decoder's LM) as a directory `transformers` loads.

Every key is mapped explicitly; a missing, unexpected or mis-shaped key is one `HFImportError`
listing them all, and features vlmoe lacks are refused by name. Pickled weights are never read.
"""

from vlmoe.models.hf.api import export_model, import_model, model_types
from vlmoe.models.hf.compose import (
    VISION_TOWERS,
    compose_contrastive,
    compose_decoder,
    compose_fusion,
)
from vlmoe.models.hf.efficientnet import load_lite0
from vlmoe.models.hf.files import HFImportError

__all__ = [
    "HFImportError",
    "VISION_TOWERS",
    "compose_contrastive",
    "compose_decoder",
    "compose_fusion",
    "export_model",
    "import_model",
    "load_lite0",
    "model_types",
]
