"""Visual grounding by generation (Pix2Seq / PaliGemma style): the decoder answers
"locate <referring expression>" with one box and "detect <label>" with the boxes of that label,
written as location tokens (`vlmoe.data.locations`; by default one bin per pixel of the model's
input, `GroundingConfig.num_bins` to choose).

The location tokens are added to the tokenizer when the task is built (before the model, so the
model's vocabulary includes them) and are saved with it in `tokenizer.json`. Training has one
example per (image, prompt) - every "detect" and every "locate" prompt of a sample; evaluation
one per referring expression, scored by accuracy@IoU0.5 of the first box generated.

Plain cross-entropy treats a location token one bin off as wrong as one on the far side of the
image. `GroundingConfig.loc_sigma` makes the target of each location token a Gaussian over the
neighbouring bins instead (label smoothing by distance, as SimCC, Li et al. 2022, does for
coordinates classified into bins; Generalized Focal Loss's distribution focal loss spreads a
box edge over its two nearest bins in the same spirit), and `init_location_embeddings` starts
the location tokens' embeddings (and output rows) from the 1-D sine-cosine encoding of their
bin, so neighbouring bins start out alike.

Where the image goes is the model's choice: by default the decoder reads [image tokens ; prompt ;
answer], so image tokens never see the question; a decoder built with `image_token_id` (the
tokenizer's `<image>`) reads [prompt ; image tokens ; answer] instead - the task puts the
placeholders between prompt and answer - so every image token can already attend to the
expression and mark whether it is the object asked for (the instruction-aware visual features
of InstructBLIP, Dai et al. 2023, in a decoder-only model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmoe.config import Config, check
from vlmoe.data.locations import (
    add_location_tokens,
    grounding_pairs,
    location_bins,
    text_to_boxes,
)
from vlmoe.data.sample import Sample
from vlmoe.eval.detection import GroundingEvaluator
from vlmoe.nn.embed import sincos_1d
from vlmoe.tasks.base import IGNORE_INDEX, Example, Prediction, StepOutput, Task
from vlmoe.tasks.registry import register_task


@dataclass
class GroundingConfig(Config):
    """How boxes are written and learned. `num_bins`: location bins per image side (None: one
    per input pixel, or what a loaded tokenizer holds); `loc_sigma`: standard deviation, in
    bins, of the Gaussian target over neighbouring bins of each location token (0: one-hot)."""

    num_bins: int | None = None
    loc_sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.num_bins is not None:
            check(self.num_bins >= 2, f"num_bins must be >= 2, got {self.num_bins}")
        check(self.loc_sigma >= 0, f"loc_sigma must be >= 0, got {self.loc_sigma}")


def location_soft_targets(bins_N: Tensor, num_bins: int, sigma: float) -> Tensor:
    """(N,) target bins -> (N, num_bins) target distributions: a Gaussian of std `sigma` bins
    around each target, cut to the image and renormalized (one-hot when `sigma` is 0)."""
    if sigma == 0:
        return F.one_hot(bins_N, num_bins).float()
    k = torch.arange(num_bins, device=bins_N.device, dtype=torch.float32)  # (K,)
    w_NK = torch.exp(-0.5 * ((k[None] - bins_N[:, None].float()) / sigma) ** 2)
    return w_NK / w_NK.sum(-1, keepdim=True)


def grounding_lm_loss(
    logits_NV: Tensor, labels_N: Tensor, loc_ids_K: Tensor, sigma: float
) -> Tensor:
    """Mean next-token cross-entropy over the non-ignored positions, with the soft target of
    `location_soft_targets` where the label is a location token (`loc_ids_K`: the ids of bins
    0..K-1). Equals `F.cross_entropy` when `sigma` is 0; `grounding_lm_loss_reference` is the
    per-position twin the tests hold it to."""
    logp_NV = logits_NV.float().log_softmax(-1)
    valid_N = labels_N != IGNORE_INDEX
    bin_of_V = torch.full((logits_NV.shape[-1],), -1, dtype=torch.long, device=labels_N.device)
    bin_of_V[loc_ids_K] = torch.arange(len(loc_ids_K), device=labels_N.device)
    bins_N = torch.where(valid_N, bin_of_V[labels_N.clamp_min(0)], -1)
    is_loc_N = bins_N >= 0
    nll_N = -logp_NV.gather(1, labels_N.clamp_min(0)[:, None])[:, 0]  # (N,) one-hot targets
    if sigma > 0 and bool(is_loc_N.any()):
        q_MK = location_soft_targets(bins_N[is_loc_N], len(loc_ids_K), sigma)
        soft_M = -(q_MK * logp_NV[is_loc_N][:, loc_ids_K]).sum(-1)
        nll_N = nll_N.masked_scatter(is_loc_N, soft_M)
    return (nll_N * valid_N).sum() / valid_N.sum().clamp_min(1)


def grounding_lm_loss_reference(
    logits_NV: Tensor, labels_N: Tensor, loc_ids_K: Tensor, sigma: float
) -> Tensor:
    """`grounding_lm_loss` one position at a time, with the whole-vocabulary target written
    out: the slow, obviously correct twin."""
    loc = [int(i) for i in loc_ids_K]
    total, count = logits_NV.new_zeros((), dtype=torch.float32), 0
    for logits_V, label in zip(logits_NV.float(), labels_N.tolist()):
        if label == IGNORE_INDEX:
            continue
        target_V = torch.zeros_like(logits_V)
        if label in loc and sigma > 0:
            k = loc.index(label)
            w = [math.exp(-0.5 * ((j - k) / sigma) ** 2) for j in range(len(loc))]
            for j, wj in zip(loc, w):
                target_V[j] = wj / sum(w)
        else:
            target_V[label] = 1.0
        total = total - (target_V * logits_V.log_softmax(-1)).sum()
        count += 1
    return total / max(count, 1)


@torch.no_grad()
def init_location_embeddings(model: nn.Module, loc_ids: Sequence[int]) -> None:
    """Set the input embeddings (and untied output rows) of the location tokens of a decoder
    (`model.lm`) to the 1-D sine-cosine encoding of their bin, scaled to the rows' current
    standard deviation, so that neighbouring bins start out alike."""
    lm = model.lm
    ids = torch.tensor(list(loc_ids), dtype=torch.long)
    dim = lm.embed.weight.shape[1]
    enc_KD = sincos_1d(dim, torch.arange(len(ids)).float())  # (K, D), unit-variance columns
    enc_KD = enc_KD / enc_KD.std()
    for weight in (lm.embed.weight, getattr(lm.lm_head, "weight", None)):
        if weight is not None:
            std = float(weight[ids].std())
            weight[ids] = (enc_KD * std).to(weight.dtype)


def insert_placeholders(rows_BL: Tensor, at_B: Tensor, count: int, fill: int | Tensor) -> Tensor:
    """`count` copies of `fill` inserted into each row `b` of `rows_BL` before position
    `at_B[b]` (`L`: at the end): (B, L + count)."""
    B, L = rows_BL.shape
    pos_L = torch.arange(L, device=rows_BL.device)
    shift_BL = (pos_L[None] >= at_B[:, None]).long() * count  # later tokens move right
    out = torch.empty(B, L + count, dtype=rows_BL.dtype, device=rows_BL.device)
    out[:] = fill if isinstance(fill, int) else fill.to(rows_BL.dtype)
    out.scatter_(1, pos_L[None] + shift_BL, rows_BL)
    return out


@register_task
class Grounding(Task):
    name = "grounding"
    architectures = ("decoder",)
    needs_text = True
    headline = ("grounding/acc@0.5",)
    predicts = ("boxes",)
    max_new_tokens = 24  # room for a few labelled boxes after "detect ..."
    config_field = "grounding"

    def __init__(
        self, info: Any, tokenizer: Any = None, config: GroundingConfig | None = None
    ) -> None:
        super().__init__(info, tokenizer)
        self.config = config or GroundingConfig()
        have = location_bins(tokenizer)
        self.num_bins = self.config.num_bins or have or info.image_size
        self.loc_ids = add_location_tokens(tokenizer, self.num_bins)  # raises on a mismatch

    def examples(self, dataset: Any, split: str) -> list[Example]:
        out = []
        for i in range(len(dataset)):
            s = dataset.describe(i)
            num_labels = len(dict.fromkeys(b.label for b in s.boxes))
            first = 0 if split == "train" else num_labels  # evaluation: referring expressions
            out.extend(Example(i, p) for p in range(first, num_labels + len(s.refs)))
        return out

    def collate(self, items: Sequence[tuple[Sample, Example]]) -> dict[str, Any]:
        tok, max_len = self.tokenizer, self.info.max_len
        seqs, labels, prompts, targets = [], [], [], []
        for s, e in items:
            prompt, answer = grounding_pairs(s, self.num_bins)[e.part]
            prefix = [tok.bos_id, *tok.encode(prompt, add_special=False)][: max_len - 2]
            tail = tok.encode(answer, add_special=False)[: max_len - len(prefix) - 1]
            seqs.append(prefix + tail + [tok.eos_id])
            labels.append([IGNORE_INDEX] * len(prefix) + tail + [tok.eos_id])
            prompts.append(prefix)
            targets.append(text_to_boxes(answer, self.num_bins)[0][0])
        batch = tok.pad(seqs, "right")
        lab = torch.full_like(batch["input_ids"], IGNORE_INDEX)  # (B, L)
        for b, row in enumerate(labels):
            lab[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        prompt = tok.pad(prompts, "left")
        return {
            "images": self.images(items),
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": lab,
            "prompt_ids": prompt["input_ids"],
            "prompt_mask": prompt["attention_mask"],
            "prompt_lens": torch.tensor([len(p) for p in prompts], dtype=torch.long),  # (B,)
            "target_boxes": torch.tensor(targets, dtype=torch.float32),  # (B, 4) normalized
        }

    @staticmethod
    def _placeholders(model: nn.Module) -> tuple[int | None, int]:
        """(the `<image>` id, image tokens per image) when `model` reads the image after the
        prompt, else (None, 0)."""
        token = getattr(getattr(model, "config", None), "image_token_id", None)
        return (token, model.num_image_tokens) if token is not None else (None, 0)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        token, n = self._placeholders(model)
        if token is not None:  # [prompt ; image ; answer]
            at = batch["prompt_lens"].to(ids.device)
            ids = insert_placeholders(ids, at, n, token)
            mask = insert_placeholders(mask, at, n, 1)
            labels = insert_placeholders(labels, at, n, IGNORE_INDEX)
        out = model(images=batch["images"], input_ids=ids, attention_mask=mask)
        logits = out.logits[:, :-1]  # token t+1 predicted at t
        loss = grounding_lm_loss(
            logits.reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            torch.tensor(self.loc_ids, device=logits.device),
            self.config.loc_sigma,
        )
        return StepOutput(loss, {}, out.moe_aux)

    def evaluators(self, loader: Any) -> dict[str, Any]:
        return {"grounding": GroundingEvaluator(loader, self.locate)}

    def _with_image(self, model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor):
        """Left-padded prompts as `model` reads them: the image placeholders after the prompt
        when it has them."""
        token, n = self._placeholders(model)
        if token is None:
            return prompt_ids, prompt_mask
        end = torch.full_like(prompt_ids[:, 0], prompt_ids.shape[1])
        return (
            insert_placeholders(prompt_ids, end, n, token),
            insert_placeholders(prompt_mask, end, n, 1),
        )

    def _answers(self, model: nn.Module, prompt_ids, prompt_mask, images, new: int) -> list[str]:
        prompt_ids, prompt_mask = self._with_image(model, prompt_ids, prompt_mask)
        out = model.generate(
            prompt_ids,
            prompt_mask,
            images=images,
            max_new_tokens=new,
            stop_tokens=[self.tokenizer.eos_id],
            pad_token_id=self.tokenizer.pad_id,
        )
        return self.tokenizer.decode_batch(out)

    @torch.no_grad()
    def locate(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """(B, 4) normalized box: the first box of each greedy answer (zeros when none)."""
        texts = self._answers(model, batch["prompt_ids"], batch["prompt_mask"], batch["images"], 6)
        boxes = []
        for text in texts:
            found = text_to_boxes(text, self.num_bins)
            boxes.append(found[0][0] if found else (0.0, 0.0, 0.0, 0.0))
        return torch.tensor(boxes, dtype=torch.float32)

    @torch.no_grad()
    def predict(
        self, model: nn.Module, image: np.ndarray, text: str | None = None, **_: Any
    ) -> Prediction:
        """Boxes for `text` ("detect red circle", "locate the small square", or a bare
        expression, read as "locate ..."), in pixels of `image`, in `extra["boxes"]`."""
        if not text:
            raise ValueError('grounding needs a text: "detect <label>" or an expression')
        prompt = text if text.split(" ", 1)[0] in ("detect", "locate") else f"locate {text}"
        images = self.image_batch(image, model)
        ids = [self.tokenizer.bos_id, *self.tokenizer.encode(prompt, add_special=False)]
        prompt_ids = torch.tensor([ids], dtype=torch.long, device=images.device)
        mask = torch.ones_like(prompt_ids, dtype=torch.bool)
        room = max(1, (self.info.max_len or len(ids) + self.max_new_tokens) - len(ids))
        (answer,) = self._answers(model, prompt_ids, mask, images, min(self.max_new_tokens, room))
        H, W = np.asarray(image).shape[:2]
        found = [
            {
                "label": label or text,
                "score": 1.0,
                "box": [box[0] * W, box[1] * H, box[2] * W, box[3] * H],
            }
            for box, label in text_to_boxes(answer, self.num_bins)
        ]
        seen_ids, seen_mask = self._with_image(model, prompt_ids, mask)
        out = model(images=images, input_ids=seen_ids, attention_mask=seen_mask)
        summary = "; ".join(f"{b['label']} {[round(v) for v in b['box']]}" for b in found)
        return Prediction(
            "boxes",
            summary or "no box",
            extra={"boxes": found},
            output=out,
            tokens=self.token_strings(ids),  # the prompt the routing pass read
        )
