"""The five tasks of the scaling study (`benchmarks/scaling.py`): models, data, evaluators.

Each task pairs an architecture with a dataset and a held-out metric:

1. `vqa`: scene VQA (answer classification), fusion encoder with VL-MoE modality expert groups
   (Shen et al. 2023, "Scaling Vision-Language Models with Sparse Mixture of Experts").
2. `caption`: scene captioning, MoE-LLaVA-style decoder (Lin et al. 2024) with MoE in the
   language model; corpus BLEU-4 and a caption attribute exact-match (below).
3. `retrieval`: LIMoE-style contrastive tower (Mustafa et al. 2022), one shared expert pool;
   recall@1 image->text and text->image.
4. `mnist`: the MNIST 5k digits with a V-MoE ViT (Riquelme et al. 2021); accuracy.
5. `comp`: the compositional split of the scene world (CLEVR-CoGenT style): colour-shape pairs
   held out of training appear in every test scene; fusion VQA accuracy.

Dense and MoE twins differ only in `transformer.moe` (MoE in every other block, V-MoE's
placement). At equal active parameters per token an expert's hidden width is the dense FFN's
divided by `top_k`, so a token runs the same FFN weights in both.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vlmoe.config import MoEConfig
from vlmoe.data import COLOURS, SHAPES
from vlmoe.models.config import (
    ContrastiveConfig,
    DecoderConfig,
    FusionConfig,
    TextConfig,
    TransformerConfig,
    ViTConfig,
)
from vlmoe.models.presets import twin_moe

# Held-out (colour, shape) pairs of the compositional task: one per shape and colour, 4 of the
# world's 24 pairs, so every colour and every shape is still seen in training.
HOLDOUT = (("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "star"))


@dataclass(frozen=True)
class Sizes:
    """Model sizes shared by every task (the dense tower; MoE twins change only the FFNs)."""

    dim: int = 64
    num_layers: int = 4
    num_heads: int = 4
    hidden_dim: int = 256  # dense FFN hidden width
    image_size: int = 32
    patch_size: int = 8
    text_len: int = 32
    vocab: int = 256  # BPE vocabulary trained on the task's training text
    # Channels of a convolutional stem in front of the transformer (`patch_embed="conv"`,
    # Xiao et al. 2021); 0 = ViT's linear patch embedding. The stem needs a power-of-2 patch,
    # so MNIST's 28x28 digits then use 4x4 patches (a 7x7 grid) instead of 7x7 ones.
    conv_stem: int = 0


@dataclass(frozen=True)
class TaskSpec:
    """One task of the study: what to train and how to score it."""

    name: str
    title: str
    architecture: str
    run_task: str  # vlmoe.train RunConfig.task
    metric: str  # the headline metric (a key of the evaluation results)
    metric_label: str
    extra: tuple[str, ...] = ()  # further metrics shown in the table
    data: dict[str, Any] = field(default_factory=dict)  # vlmoe.train DataSelection fields
    eval_split: str = "test"
    expert_groups: str = "none"  # "modality" = VL-MoE groups (+ cross-modal experts)


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "vqa",
            "scene VQA (fusion, modality experts)",
            "fusion",
            "vqa",
            "vqa/accuracy",
            "VQA acc",
            data={"name": "shapes"},
            expert_groups="modality",
        ),
        TaskSpec(
            "caption",
            "scene captioning (decoder)",
            "decoder",
            "captioning",
            "caption/bleu4",
            "BLEU-4",
            extra=("caption/attr_em",),
            data={"name": "shapes"},
        ),
        TaskSpec(
            "retrieval",
            "image-text retrieval (contrastive)",
            "contrastive",
            "contrastive",
            "retrieval/r@1",
            "R@1 mean",
            extra=("retrieval/i2t_r@1", "retrieval/t2i_r@1"),
            data={"name": "shapes"},
        ),
        TaskSpec(
            "mnist",
            "MNIST-5k classification (ViT)",
            "vit",
            "classification",
            "classification/accuracy",
            "accuracy",
            data={"name": "mnist"},
        ),
        TaskSpec(
            "comp",
            "compositional VQA, unseen colour-shape pairs (fusion)",
            "fusion",
            "vqa",
            "comp/accuracy",
            "comp VQA acc",
            extra=("vqa/accuracy",),
            data={"name": "shapes", "shapes": {"holdout": [list(p) for p in HOLDOUT]}},
            eval_split="comp_test",
            expert_groups="modality",
        ),
    )
}


# ----------------------------------------------------------------------------- models


def tower(s: Sizes, moe: MoEConfig | None = None, **kw: Any) -> TransformerConfig:
    return TransformerConfig(
        dim=s.dim,
        num_layers=s.num_layers,
        num_heads=s.num_heads,
        hidden_dim=s.hidden_dim,
        moe=moe,
        moe_every=2,
        **kw,
    )


def moe_config(
    spec: TaskSpec, s: Sizes, num_experts: int, top_k: int, ffn_mult: float = 1, **kw: Any
) -> MoEConfig:
    """The MoE FFN of a twin: experts of width hidden * ffn_mult / top_k (ffn_mult=1: equal
    active parameters).

    With modality groups (VL-MoE) the experts split into an image group, a text group and
    `max(2, E // 4)` cross-modal experts every token may reach.
    """
    groups = kw.pop("expert_groups", spec.expert_groups)
    if groups == "modality":
        kw.setdefault("num_cross_modal_experts", max(2, num_experts // 4))
    return twin_moe(
        s.dim, round(s.hidden_dim * ffn_mult), num_experts, top_k, expert_groups=groups, **kw
    )


def model_config(spec: TaskSpec, s: Sizes, moe: MoEConfig | None) -> Any:
    """The task's model config (dense when `moe` is None). Vocabulary, class and answer
    counts are filled in from the data by `vlmoe.recipes.run.build_model`."""
    stem = {"patch_embed": "conv", "stem_channels": s.conv_stem} if s.conv_stem else {}
    img = {"image_size": s.image_size, "patch_size": s.patch_size, **stem}
    if spec.architecture == "fusion":
        return FusionConfig(
            **img,
            vocab_size=s.vocab,
            max_seq_len=s.text_len,
            num_classes=0,
            num_answers=32,
            transformer=tower(s, moe),
        )
    if spec.architecture == "contrastive":
        return ContrastiveConfig(
            **img,
            vocab_size=s.vocab,
            max_seq_len=s.text_len,
            embed_dim=s.dim,
            transformer=tower(s, moe),
        )
    if spec.architecture == "decoder":
        # MoE-LLaVA: a dense vision encoder, MoE in the language model only.
        return DecoderConfig(
            vision=ViTConfig(**img, num_classes=0, transformer=tower(s)),
            text=TextConfig(
                vocab_size=s.vocab,
                max_seq_len=s.text_len,
                transformer=tower(s, moe, norm="rmsnorm"),
            ),
        )
    if spec.architecture == "vit":
        # MNIST digits are 28x28: patch 7 gives a 4x4 grid (the shapes' 32/4 gives 8x8).
        return ViTConfig(
            image_size=28,
            patch_size=4 if s.conv_stem else 7,
            in_channels=3,
            num_classes=10,
            transformer=tower(s, moe),
            **stem,
        )
    raise ValueError(f"unknown architecture {spec.architecture!r}")


def register_presets(
    spec: TaskSpec, s: Sizes, variants: dict[str, MoEConfig | None]
) -> dict[str, str]:
    """Register one preset per variant (`scaling-<task>-<variant>`); returns variant -> name.

    A named preset per model keeps each run's config short and its model easy to rebuild
    (`vlmoe.models.registry.preset_config`).
    """
    from vlmoe.models.registry import register_preset

    names = {}
    for variant, moe in variants.items():
        name = f"scaling-{spec.name}-{variant}"
        register_preset(
            name, spec.architecture, model_config(spec, s, moe), f"scaling study {name}"
        )
        names[variant] = name
    return names


def tokens_per_example(spec: TaskSpec, s: Sizes, mean_text_len: float) -> float:
    """Tokens one training example runs through the model's transformers (for FLOPs)."""
    if spec.architecture == "vit":
        return (28 // (4 if s.conv_stem else 7)) ** 2 + 1
    image = (s.image_size // s.patch_size) ** 2
    if spec.architecture == "decoder":
        return image + (image + mean_text_len)  # vision encoder, then the LM over [image ; text]
    return image + mean_text_len  # fusion: one sequence; contrastive: two passes


# ----------------------------------------------------------------------------- data


def comp_eval_examples(world_cfg: Any, num: int, spec: TaskSpec, run: Any) -> Any:
    """Held-out examples of the compositional split (every scene shows a held-out pair)."""
    from vlmoe.data.shapes_data import ShapesDataset
    from vlmoe.tasks import TaskDataset

    ds = ShapesDataset(world_cfg, spec.eval_split, num)
    return TaskDataset(ds, run.task.examples(ds, "eval"), run.info.image_size)


# ----------------------------------------------------------------------------- captions

_COLOUR_RE = "|".join(COLOURS)
_SHAPE_RE = "|".join(SHAPES)
_MENTION = re.compile(rf"\b(?:(small|large)\s+)?(?:({_COLOUR_RE})\s+)?({_SHAPE_RE})(?:es|s)?\b")


def mentions(caption: str) -> list[tuple[str | None, str | None, str]]:
    """(size, colour, shape) of every object a caption names (size/colour None if unsaid)."""
    return [(m[1], m[2], m[3]) for m in _MENTION.finditer(caption.lower())]


def attribute_match(hypothesis: str, canonical: str) -> tuple[bool, bool]:
    """(exact, correct) of a generated caption against the scene's canonical caption.

    The canonical caption (the first reference) names every object with size, colour and
    shape. *exact*: the set of (colour, shape) pairs the hypothesis names equals the scene's.
    *correct*: it names at least one object and every attribute it states is true of some
    object of the scene (a caption that is right but incomplete).
    """
    scene = mentions(canonical)
    said = mentions(hypothesis)
    pairs = {(c, sh) for _, c, sh in scene}
    said_pairs = {(c, sh) for _, c, sh in said if c is not None}
    exact = bool(said) and said_pairs == pairs and all(c is not None for _, c, _ in said)

    def true(m: tuple[str | None, str | None, str]) -> bool:
        size, colour, shape = m
        return any(
            sh == shape and (colour is None or c == colour) and (size is None or sz == size)
            for sz, c, sh in scene
        )

    return exact, bool(said) and all(true(m) for m in said)


class CaptionEvaluator:
    """Greedy captions of the decoder, scored once for BLEU-4 and the attribute matches."""

    def __init__(self, loader: Sequence[dict], caption_fn: Any) -> None:
        self.loader, self.caption_fn = loader, caption_fn
        self.samples: list[tuple[str, str]] = []

    @torch.no_grad()
    def run(self, model: torch.nn.Module) -> Iterator[tuple[str, float]]:
        from vlmoe.eval.captioning import bleu4

        hyps: list[str] = []
        refs: list[list[str]] = []
        for batch in self.loader:
            hyps += list(self.caption_fn(model, batch))
            refs += [list(r) for r in batch["captions"]]
        matches = [attribute_match(h, r[0]) for h, r in zip(hyps, refs)]
        self.samples = [(h, r[0]) for h, r in zip(hyps[:3], refs[:3])]
        yield "bleu4", bleu4(hyps, refs)
        yield "attr_em", sum(e for e, _ in matches) / max(1, len(matches))
        yield "attr_correct", sum(c for _, c in matches) / max(1, len(matches))
        yield "num_examples", len(hyps)


def build_evaluators(
    spec: TaskSpec,
    run: Any,
    eval_batch: int,
    max_examples: int | None,
    routing: bool,
    iid: Any = None,
) -> dict[str, Any]:
    """Evaluators of a task over the run's held-out examples (named as the table expects);
    `iid` = the in-distribution held-out VQA data (a TaskDataset) for the compositional task."""
    from vlmoe.eval.routing import RoutingEvaluator
    from vlmoe.recipes.run import make_evaluators
    from vlmoe.tasks import eval_loader

    out = make_evaluators(run, max_examples=max_examples, batch_size=eval_batch, routing=False)
    data = eval_loader(run.eval_data, run.task.collate, eval_batch, limit=max_examples)
    if spec.name == "caption":
        out.pop("captioning", None)
        out["caption"] = CaptionEvaluator(data, run.task.captions)
    if spec.name == "comp":
        out["comp"] = out.pop("vqa")
        if iid is not None:
            iid_data = eval_loader(iid, run.task.collate, eval_batch, limit=max_examples)
            out["vqa"] = run.task.evaluators(iid_data)["vqa"]
    if routing:
        out["routing"] = RoutingEvaluator(data)
    return out


def derived_metrics(spec: TaskSpec, results: dict[str, Any]) -> dict[str, Any]:
    """Metrics the table needs that the evaluators give in parts (mean R@1 both ways)."""
    out = dict(results)
    if spec.name == "retrieval":
        # The study's protocol is one listing caption per image. On the scene world the
        # evaluator now ranks every caption of an image (its own i2t/t2i keys); the listing
        # kind is the study's protocol, so stored and new runs stay comparable.
        for d in ("i2t", "t2i"):
            if f"retrieval/{d}_r@1/listing" in results:
                out[f"retrieval/all_captions/{d}_r@1"] = results[f"retrieval/{d}_r@1"]
                out[f"retrieval/{d}_r@1"] = results[f"retrieval/{d}_r@1/listing"]
        out["retrieval/r@1"] = (out["retrieval/i2t_r@1"] + out["retrieval/t2i_r@1"]) / 2
    return out


def with_eval_split(run: Any, spec: TaskSpec, cfg: Any, num_eval: int) -> Any:
    """The run with its held-out examples from `spec.eval_split` (the compositional split)
    and, for reference, the in-distribution held-out examples under `iid_examples`."""
    if spec.eval_split == "test":
        return run, None
    world = cfg.data.world(run.info.image_size)
    iid = run.eval_data
    return dataclasses.replace(run, eval_data=comp_eval_examples(world, num_eval, spec, run)), iid
