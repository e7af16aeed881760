"""Collate functions: lists of Samples -> dict batches for each architecture and task.

Every collator returns a dict with a fixed set of keys (never depending on flags). Shared keys:

- ``images``: (B, 3, H, W) float32. Samples should have gone through an
  :class:`~vlmoe.data.transforms.ImageTransform`; raw uint8 images of equal size are normalized
  with the default mean/std here.
- ``input_ids`` (B, T) long, right-padded with ``tokenizer.pad_id``; ``attention_mask`` (B, T)
  bool, True on real tokens; ``modality_ids`` (B, T) long: ``MODALITY_IMAGE`` (0) on ``<image>``
  placeholder tokens, ``MODALITY_TEXT`` (1) elsewhere. A fusion model prepends its own patch tokens
  (modality 0) in front of the text.
- label tensors use -100 for "none" (ignored by ``torch.nn.functional.cross_entropy``).

``pick`` chooses which caption/question/referring expression of a sample goes in the batch:
"first" (deterministic, for evaluation) or "random" (torch RNG, for training).

=====================  ============================  =============================================
collator               task (architecture)           extra keys
=====================  ============================  =============================================
ClassificationCollate  classification (any)          labels (B,)
ContrastiveCollate     retrieval/contrastive         labels (B,), texts
VQACollate             VQA as classification (fusion) answer_labels (B,), questions, answers
GenerationCollate      captioning / open VQA (decoder) labels (B, T), prompt_ids/prompt_mask
                                                     (B, P) left-padded, targets
DetectionCollate       detection                     boxes (B, N, 4), box_labels (B, N), box_mask
GroundingCollate       grounding (refs -> box)       target_boxes (B, 4), texts
=====================  ============================  =============================================

Boxes in batches are ``[x0, y0, x1, y1]`` normalized to [0, 1] by the image width and height.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from vlmoe.data.sample import MODALITY_IMAGE, MODALITY_TEXT, Sample
from vlmoe.data.tokenizer import Tokenizer
from vlmoe.data.transforms import to_tensor

Pick = Literal["first", "random"]
IGNORE_INDEX = -100


def stack_images(samples: Sequence[Sample]) -> torch.Tensor:
    """(B, 3, H, W) float32 from transformed tensors or raw (H, W, 3) uint8 arrays."""
    imgs = [
        s.image if isinstance(s.image, torch.Tensor) else to_tensor(np.asarray(s.image))
        for s in samples
    ]
    shapes = {tuple(x.shape) for x in imgs}
    if len(shapes) != 1:
        raise ValueError(
            f"images in a batch differ in shape {sorted(shapes)}; "
            "use ImageTransform(image_size=...)"
        )
    return torch.stack(imgs)  # (B, 3, H, W)


def _choose(items: Sequence[Any], pick: Pick, what: str, sample: Sample) -> Any:
    if not items:
        raise ValueError(
            f"sample {sample.meta.get('source', '?')}#{sample.meta.get('index', '?')} has no {what}"
        )
    if pick == "first":
        return items[0]
    if pick == "random":
        return items[int(torch.randint(len(items), ()))]
    raise ValueError(f"pick must be 'first' or 'random', got {pick!r}")


def _text_batch(tok: Tokenizer, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
    enc = tok.encode_batch(texts, max_len=max_len)
    enc["modality_ids"] = _modality(enc["input_ids"], tok)
    return enc


def _modality(ids: torch.Tensor, tok: Tokenizer) -> torch.Tensor:
    """(B, T) modality ids: image on ``<image>`` placeholders, text elsewhere."""
    m = torch.full_like(ids, MODALITY_TEXT)
    m[ids == tok.image_id] = MODALITY_IMAGE
    return m


def _labels(samples: Sequence[Sample]) -> torch.Tensor:
    return torch.tensor(
        [IGNORE_INDEX if s.label is None else s.label for s in samples], dtype=torch.long
    )


@dataclass
class ClassificationCollate:
    """``{"images": (B, 3, H, W), "labels": (B,)}``."""

    def __call__(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        return {"images": stack_images(samples), "labels": _labels(samples)}


@dataclass
class ContrastiveCollate:
    """Images with one caption each, for contrastive training and retrieval."""

    tokenizer: Tokenizer
    max_len: int = 32
    pick: Pick = "random"

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        texts = [_choose(s.captions, self.pick, "captions", s) for s in samples]
        return {
            "images": stack_images(samples),
            **_text_batch(self.tokenizer, texts, self.max_len),
            "labels": _labels(samples),
            "texts": texts,
        }


@dataclass
class VQACollate:
    """Images with one question each and the answer's id in ``answer_vocab`` (fusion VQA head)."""

    tokenizer: Tokenizer
    answer_vocab: Sequence[str]
    max_len: int = 32
    pick: Pick = "random"
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {a: i for i, a in enumerate(self.answer_vocab)}

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        qas = [_choose(s.qa, self.pick, "questions", s) for s in samples]
        answers = [qa.answer for qa in qas]
        return {
            "images": stack_images(samples),
            **_text_batch(self.tokenizer, [qa.question for qa in qas], self.max_len),
            "answer_labels": torch.tensor(
                [self._index.get(a, IGNORE_INDEX) for a in answers], dtype=torch.long
            ),
            "questions": [qa.question for qa in qas],
            "answers": answers,
        }


@dataclass
class GenerationCollate:
    """Decoder (MoE-LLaVA style) batches: captioning (``task="caption"``) or open VQA (``"vqa"``).

    Sequence: ``<bos> <image>*num_image_tokens prompt target <eos>``, where the prompt is
    ``caption_prompt`` (captioning) or the question (VQA) and the target the caption or answer.
    ``labels`` is aligned with ``input_ids`` (Hugging Face convention: the model predicts
    ``labels[:, t + 1]`` from position t) and is -100 except on target tokens and the final eos.
    ``prompt_ids``/``prompt_mask`` hold ``<bos> <image>* prompt`` left-padded, ready for
    generation; ``targets`` the reference strings.
    """

    tokenizer: Tokenizer
    task: Literal["caption", "vqa"] = "caption"
    caption_prompt: str = "describe the image."
    max_len: int = 64
    num_image_tokens: int = 1
    pick: Pick = "random"

    def __post_init__(self) -> None:
        if self.task not in ("caption", "vqa"):
            raise ValueError(f"GenerationCollate.task={self.task!r}: must be 'caption' or 'vqa'")
        if self.max_len < self.num_image_tokens + 3:
            raise ValueError(f"GenerationCollate.max_len={self.max_len} is too short")

    def _pair(self, s: Sample) -> tuple[str, str]:
        if self.task == "caption":
            return self.caption_prompt, _choose(s.captions, self.pick, "captions", s)
        qa = _choose(s.qa, self.pick, "questions", s)
        return qa.question, qa.answer

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        tok = self.tokenizer
        seqs, labels, prompts, targets = [], [], [], []
        for s in samples:
            prompt, target = self._pair(s)
            prefix = (
                [tok.bos_id]
                + [tok.image_id] * self.num_image_tokens
                + tok.encode(prompt, add_special=False)
            )
            prefix = prefix[: self.max_len - 2]  # leave room for one target token and eos
            tail = tok.encode(target, add_special=False)[: self.max_len - len(prefix) - 1] + [
                tok.eos_id
            ]
            seqs.append(prefix + tail)
            labels.append([IGNORE_INDEX] * len(prefix) + tail)
            prompts.append(prefix)
            targets.append(target)
        batch = tok.pad(seqs, "right")
        lab = torch.full_like(batch["input_ids"], IGNORE_INDEX)  # (B, T)
        for b, row in enumerate(labels):
            lab[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        prompt = tok.pad(prompts, "left")
        return {
            "images": stack_images(samples),
            **batch,
            "modality_ids": _modality(batch["input_ids"], tok),
            "labels": lab,
            "prompt_ids": prompt["input_ids"],
            "prompt_mask": prompt["attention_mask"],
            "targets": targets,
        }


def _norm_box(b: Any, H: int, W: int) -> list[float]:
    return [b.x0 / W, b.y0 / H, b.x1 / W, b.y1 / H]


@dataclass
class DetectionCollate:
    """Images with every box: ``boxes`` (B, N, 4) normalized xyxy, ``box_labels`` (B, N) ids into
    ``box_label_names`` (-100 on padding or unknown labels), ``box_mask`` (B, N) bool."""

    box_label_names: Sequence[str]
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {n: i for i, n in enumerate(self.box_label_names)}

    def __call__(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        images = stack_images(samples)
        N = max([len(s.boxes) for s in samples] + [1])
        boxes = torch.zeros((len(samples), N, 4), dtype=torch.float32)  # (B, N, 4)
        labels = torch.full((len(samples), N), IGNORE_INDEX, dtype=torch.long)  # (B, N)
        mask = torch.zeros((len(samples), N), dtype=torch.bool)  # (B, N)
        for b, s in enumerate(samples):
            H, W = s.image_hw
            for k, box in enumerate(s.boxes):
                boxes[b, k] = torch.tensor(_norm_box(box, H, W))
                labels[b, k] = self._index.get(box.label, IGNORE_INDEX)
                mask[b, k] = True
        return {"images": images, "boxes": boxes, "box_labels": labels, "box_mask": mask}


@dataclass
class GroundingCollate:
    """Images with one referring expression each and its box: ``target_boxes`` (B, 4) normalized."""

    tokenizer: Tokenizer
    max_len: int = 32
    pick: Pick = "random"

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        refs = [_choose(s.refs, self.pick, "referring expressions", s) for s in samples]
        target = torch.tensor(
            [_norm_box(s.boxes[r.box], *s.image_hw) for s, r in zip(samples, refs, strict=True)],
            dtype=torch.float32,
        )  # (B, 4)
        texts = [r.text for r in refs]
        return {
            "images": stack_images(samples),
            **_text_batch(self.tokenizer, texts, self.max_len),
            "target_boxes": target,
            "texts": texts,
        }
