"""Captioning with the decoder (MoE-LLaVA style): next-token cross-entropy on
"<bos> caption <eos>" after the image tokens; scored by BLEU-4 of greedy generations.

Training has one example per (image, caption); evaluation one per image, with every caption as
a reference. `generate` continues a prompt after the image (KV-cached, `vlmoe.models.generation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmoe.data.sample import Sample
from vlmoe.eval.captioning import CaptioningEvaluator
from vlmoe.tasks.base import IGNORE_INDEX, Example, Prediction, StepOutput, Task
from vlmoe.tasks.registry import register_task


def caption_examples(dataset: Any, split: str) -> list[Example]:
    """Training: one example per (image, caption); evaluation: one per image (part -1)."""
    out = []
    for i in range(len(dataset)):
        n = len(dataset.describe(i).captions)
        if split == "train":
            out.extend(Example(i, c) for c in range(n))
        elif n:
            out.append(Example(i, -1))
    return out


def caption_text(sample: Sample, example: Example) -> str:
    """The caption an example trains on (the first one for an evaluation example)."""
    return sample.captions[max(example.part, 0)]


@register_task
class Captioning(Task):
    name = "captioning"
    architectures = ("decoder",)
    default_for = ("decoder",)
    needs_text = True
    headline = ("captioning/bleu4",)
    max_new_tokens = 24  # evaluation's generation length (EvalConfig.max_new_tokens sets it)

    def examples(self, dataset: Any, split: str) -> list[Example]:
        return caption_examples(dataset, split)

    def collate(self, items: Sequence[tuple[Sample, Example]]) -> dict[str, Any]:
        return {
            "images": self.images(items),
            **self.encode([caption_text(s, e) for s, e in items]),
            "captions": [list(s.captions) for s, _ in items],
        }

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = model(images=batch["images"], input_ids=ids, attention_mask=mask)
        target = ids[:, 1:].masked_fill(~mask[:, 1:].bool(), IGNORE_INDEX)  # token t+1 at t
        logits = out.logits[:, :-1]
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            ignore_index=IGNORE_INDEX,
        )
        return StepOutput(loss, {}, out.moe_aux)

    def evaluators(self, loader: Any) -> dict[str, Any]:
        return {"captioning": CaptioningEvaluator(loader, self.captions)}

    def captions(self, model: nn.Module, batch: dict[str, Any]) -> list[str]:
        images = batch["images"]
        prompt = torch.full((images.shape[0], 1), self.tokenizer.bos_id, device=images.device)
        out = self._generate(model, prompt, images, self.max_new_tokens)
        return [t.strip() for t in self.tokenizer.decode_batch(out)]

    def _generate(self, model, prompt_ids, images, max_new_tokens: int, **sampling: Any):
        room = (self.info.max_len or prompt_ids.shape[1] + max_new_tokens) - prompt_ids.shape[1]
        if room < 1:
            raise ValueError(
                f"the prompt is {prompt_ids.shape[1]} tokens; the model reads at most "
                f"{self.info.max_len}: shorten it"
            )
        return model.generate(
            prompt_ids,
            images=images,
            max_new_tokens=min(max_new_tokens, room),
            stop_tokens=[self.tokenizer.eos_id],
            pad_token_id=self.tokenizer.pad_id,
            **sampling,
        )

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        image: np.ndarray,
        prompt: str | None = None,
        *,
        max_new_tokens: int = 24,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[int]:
        """Token ids generated after the image and `prompt` (greedy when temperature == 0),
        <eos> excluded. The whole sequence fits the model's `max_len`."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        images = self.image_batch(image, model)
        ids = [self.tokenizer.bos_id]
        if prompt:
            ids += self.tokenizer.encode(prompt, add_special=False)
        prompt_ids = torch.tensor([ids], dtype=torch.long, device=images.device)
        g = torch.Generator(device=images.device).manual_seed(seed) if temperature > 0 else None
        out = self._generate(
            model,
            prompt_ids,
            images,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=g,
        )
        new = out[0].tolist()
        eos = self.tokenizer.eos_id
        return ids + (new[: new.index(eos)] if eos in new else new)

    @torch.no_grad()
    def predict(
        self, model: nn.Module, image: np.ndarray, text: str | None = None, **options: Any
    ) -> Prediction:
        """A caption (the continuation of `text` when given); `output` is the forward pass over
        the image and the generated tokens, so its routing is the caption's."""
        keep = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")
        ids = self.generate(model, image, text, **{k: v for k, v in options.items() if k in keep})
        device = next(model.parameters()).device
        seq = torch.tensor([ids], dtype=torch.long, device=device)
        out = model(images=self.image_batch(image, model), input_ids=seq)
        caption = self.tokenizer.decode(ids).strip()
        return Prediction("caption", caption, output=out, tokens=self.token_strings(ids))
