"""Visual grounding by generation (Pix2Seq / PaliGemma style): the decoder answers
"locate <referring expression>" with one box and "detect <label>" with the boxes of that label,
written as location tokens (`vlmoe.data.locations`; one bin per pixel of the model's input).

The location tokens are added to the tokenizer when the task is built (before the model, so the
model's vocabulary includes them) and are saved with it in `tokenizer.json`. Training has one
example per (image, prompt) - every "detect" and every "locate" prompt of a sample; evaluation
one per referring expression, scored by accuracy@IoU0.5 of the first box generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmoe.data.locations import add_location_tokens, grounding_pairs, text_to_boxes
from vlmoe.data.sample import Sample
from vlmoe.eval.detection import GroundingEvaluator
from vlmoe.tasks.base import IGNORE_INDEX, Example, Prediction, StepOutput, Task
from vlmoe.tasks.registry import register_task


@register_task
class Grounding(Task):
    name = "grounding"
    architectures = ("decoder",)
    needs_text = True
    headline = ("grounding/acc@0.5",)
    predicts = ("boxes",)
    max_new_tokens = 24  # room for a few labelled boxes after "detect ..."

    def __init__(self, info: Any, tokenizer: Any = None) -> None:
        super().__init__(info, tokenizer)
        self.num_bins = info.image_size
        add_location_tokens(tokenizer, self.num_bins)

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
            "target_boxes": torch.tensor(targets, dtype=torch.float32),  # (B, 4) normalized
        }

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out = model(
            images=batch["images"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
        )
        logits = out.logits[:, :-1].float()  # token t+1 predicted at t
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            batch["labels"][:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX,
        )
        return StepOutput(loss, {}, out.moe_aux)

    def evaluators(self, loader: Any) -> dict[str, Any]:
        return {"grounding": GroundingEvaluator(loader, self.locate)}

    def _answers(self, model: nn.Module, prompt_ids, prompt_mask, images, new: int) -> list[str]:
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
        out = model(images=images, input_ids=prompt_ids, attention_mask=mask)
        summary = "; ".join(f"{b['label']} {[round(v) for v in b['box']]}" for b in found)
        return Prediction(
            "boxes",
            summary or "no box",
            extra={"boxes": found},
            output=out,
            tokens=self.token_strings(ids),  # the prompt the routing pass read
        )
