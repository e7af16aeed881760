"""Tasks: what a training example is, how a batch is built, the loss, and the evaluators.

A task turns a dataset of `vlmoe.data.Sample`s into flat *examples* (one per image for
classification, one per (image, question) for VQA, one per (image, caption) for captioning and
contrastive training), collates them into dict batches with the keys the models and the
evaluators share (`images`, `input_ids`, `attention_mask`, `label`, `answer_id`, `answer`,
`captions`), and computes the task loss from the model's output.

- classification: cross-entropy on `class_logits` (fusion) or `logits` (ViT);
- vqa: VQA as answer classification over the dataset's answer vocabulary (cross-entropy on
  `vqa_logits`), as in VL-MoE / VLMo; "vqa+classification" adds both heads' losses on one
  forward pass over [image ; question];
- captioning: next-token cross-entropy of the decoder on "<bos> caption <eos>" after the image
  tokens (MoE-LLaVA style), scored by BLEU-4 of greedy generations;
- contrastive: the symmetric InfoNCE loss of CLIP / LIMoE over the batch.

Images are resized to the model's `image_size` and scaled to [-1, 1] (`image_to_tensor`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmoe.train.trainer import StepOutput

TASKS = ("classification", "vqa", "vqa+classification", "captioning", "contrastive")
DEFAULT_TASK = {
    "vit": "classification",
    "fusion": "vqa+classification",
    "decoder": "captioning",
    "contrastive": "contrastive",
}


def resolve_task(task: str, architecture: str) -> str:
    """The task a run trains: `task`, or the architecture's natural one for "auto"."""
    if task == "auto":
        if architecture not in DEFAULT_TASK:
            raise ValueError(
                f"no default task for architecture {architecture!r}; set task explicitly"
            )
        return DEFAULT_TASK[architecture]
    allowed = {
        "vit": ("classification",),
        "fusion": ("classification", "vqa", "vqa+classification"),
        "decoder": ("captioning",),
        "contrastive": ("contrastive",),
    }.get(architecture, ())
    if task not in allowed:
        raise ValueError(
            f"task {task!r} does not fit a {architecture} model; it can train {list(allowed)}"
        )
    return task


def image_to_tensor(image: np.ndarray | Tensor, size: int) -> Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float, bilinear resize, scaled to [-1, 1]
    (`vlmoe.data.transforms`' default mean = std = 0.5, so batches match `vlmoe.data.collate`)."""
    from vlmoe.data.transforms import resize_image, to_tensor

    if isinstance(image, Tensor) and image.dtype != torch.uint8:
        return image  # already transformed
    return to_tensor(resize_image(np.asarray(image), (size, size)))


def tensor_to_image(t: Tensor) -> np.ndarray:
    """Inverse of `image_to_tensor`: (3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


@dataclass
class Examples:
    """A task's examples over a dataset: images stored once, examples point at them."""

    images: Tensor  # (N_img, 3, S, S)
    items: list[dict[str, Any]]  # each: {"image": int, ...task fields}
    label_names: list[str] = field(default_factory=list)
    answer_vocab: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def build_examples(
    samples: Sequence,
    task: str,
    image_size: int,
    split: str,
    answer_vocab: Sequence[str] = (),
    label_names: Sequence[str] = (),
    max_images: int | None = None,
) -> Examples:
    """Flatten samples into the task's examples. `split="eval"` keeps one example per image
    for captioning / contrastive (with every caption as a reference) and every question for VQA."""
    answer_index = {a: i for i, a in enumerate(answer_vocab)}
    images, items = [], []
    n = len(samples) if max_images is None else min(max_images, len(samples))
    for i in range(n):
        s = samples[i]
        images.append(image_to_tensor(s.image, image_size))
        label = -1 if s.label is None else int(s.label)
        if task == "classification":
            if label >= 0:
                items.append({"image": i, "label": label})
        elif task in ("vqa", "vqa+classification"):
            for qa in s.qa:
                items.append(
                    {
                        "image": i,
                        "text": qa.question,
                        "answer": qa.answer,
                        "answer_id": answer_index.get(qa.answer, -1),
                        "label": label,
                        "question_type": qa.kind,
                    }
                )
        elif task in ("captioning", "contrastive"):
            if not s.captions:
                continue
            if split == "train":
                items.extend({"image": i, "text": c} for c in s.captions)
            else:
                items.append({"image": i, "text": s.captions[0], "captions": list(s.captions)})
        else:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if not items:
        raise ValueError(
            f"the {split} data has no examples for task {task!r} "
            "(no labels, questions or captions where the task needs them)"
        )
    return Examples(torch.stack(images), items, list(label_names), list(answer_vocab))


class Collator:
    """Examples -> dict batch. Text is tokenized with BOS/EOS and right-padded."""

    def __init__(self, examples: Examples, tokenizer: Any | None, max_len: int) -> None:
        self.examples, self.tokenizer, self.max_len = examples, tokenizer, max_len
        self._cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tokenizer.encode(text, add_special=True, max_len=self.max_len)
        return self._cache[text]

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"images": self.examples.images[[it["image"] for it in items]]}
        if "text" in items[0] and self.tokenizer is not None:
            batch.update(self.tokenizer.pad([self._ids(it["text"]) for it in items]))
            batch["attention_mask"] = batch["attention_mask"].long()
        if "label" in items[0]:
            batch["label"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
        if "answer_id" in items[0]:
            batch["answer_id"] = torch.tensor([it["answer_id"] for it in items], dtype=torch.long)
            batch["answer"] = [it["answer"] for it in items]
            batch["question_type"] = [it["question_type"] for it in items]
        if "captions" in items[0]:
            batch["captions"] = [it["captions"] for it in items]
        return batch


def batches(
    examples: Examples, collate: Callable, batch_size: int, limit: int | None = None
) -> list[dict]:
    """Fixed, in-order eval batches (a list, so every evaluator can iterate it again)."""
    n = len(examples) if limit is None else min(limit, len(examples))
    return [
        collate([examples[j] for j in range(i, min(i + batch_size, n))])
        for i in range(0, n, batch_size)
    ]


# ----------------------------------------------------------------------------- losses


def _ce(logits: Tensor | None, target: Tensor, what: str, label_smoothing: float = 0.0) -> Tensor:
    if logits is None:
        raise ValueError(f"the model has no {what} head; set its size in the model config")
    return F.cross_entropy(logits.float(), target, ignore_index=-1, label_smoothing=label_smoothing)


def _acc(logits: Tensor, target: Tensor) -> Tensor:
    valid = target >= 0
    return ((logits.argmax(-1) == target) & valid).sum() / valid.sum().clamp_min(1)


def make_objective(
    task: str, architecture: str, label_smoothing: float = 0.0
) -> Callable[[nn.Module, dict], StepOutput]:
    """`(model, batch) -> StepOutput` for a task; `label_smoothing` applies to the class and
    VQA answer heads."""
    ls = label_smoothing

    def classification(model, batch):
        if architecture == "vit":
            out = model(images=batch["images"])
            logits = out.logits
        else:
            out = model(images=batch["images"])
            logits = out.class_logits
        loss = _ce(logits, batch["label"], "classification", ls)
        return StepOutput(loss, {"acc/train": _acc(logits.detach(), batch["label"])}, out.moe_aux)

    def vqa(model, batch):
        out = model(
            images=batch["images"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
        )
        loss = _ce(out.vqa_logits, batch["answer_id"], "vqa", ls)
        metrics = {
            "loss/vqa": loss.detach(),
            "acc/train_vqa": _acc(out.vqa_logits.detach(), batch["answer_id"]),
        }
        if task == "vqa+classification":
            cls = _ce(out.class_logits, batch["label"], "classification", ls)
            metrics.update(
                {
                    "loss/classification": cls.detach(),
                    "acc/train_cls": _acc(out.class_logits.detach(), batch["label"]),
                }
            )
            loss = loss + cls
        return StepOutput(loss, metrics, out.moe_aux)

    def captioning(model, batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = model(images=batch["images"], input_ids=ids, attention_mask=mask)
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -1)  # predict token t+1 at t
        logits = out.logits[:, :-1]
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-1
        )
        return StepOutput(loss, {}, out.moe_aux)

    def contrastive(model, batch):
        out = model(
            images=batch["images"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
        )
        logits = out.logits_per_image.float()  # (B, B)
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return StepOutput(loss, {"acc/train_i2t": _acc(logits.detach(), target)}, out.moe_aux)

    fns = {
        "classification": classification,
        "vqa": vqa,
        "vqa+classification": vqa,
        "captioning": captioning,
        "contrastive": contrastive,
    }
    return fns[task]


# ----------------------------------------------------------------------------- generation


def caption_fn(tokenizer: Any, max_new_tokens: int) -> Callable[[nn.Module, dict], list[str]]:
    """Greedy captions from a decoder, prompted with <bos> after the image tokens."""

    def fn(model: nn.Module, batch: dict) -> list[str]:
        images = batch["images"]
        prompt = torch.full(
            (images.shape[0], 1), tokenizer.bos_id, dtype=torch.long, device=images.device
        )
        out = model.generate(
            prompt,
            images=images,
            max_new_tokens=max_new_tokens,
            stop_tokens=[tokenizer.eos_id],
            pad_token_id=tokenizer.pad_id,
        )
        return [t.strip() for t in tokenizer.decode_batch(out)]

    return fn


def iter_answers(model: nn.Module, batch: dict, answer_vocab: Sequence[str]) -> Iterator[str]:
    out = model(
        images=batch["images"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    )
    for i in out.vqa_logits.argmax(-1).tolist():
        yield answer_vocab[i]
