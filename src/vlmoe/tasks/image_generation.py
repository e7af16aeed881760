"""Image generation with a diffusion transformer (`vlmoe.models.dit`), trained by rectified
flow (`vlmoe.models.flow`): `image-generation` is conditioned on the class label of each
image (MNIST digits, scene classes), `text-to-image` on each of its captions, through the DiT's
caption encoder.

The loss drops the condition of 10% of the batch so the model also learns the unconditional
velocity that classifier-free guidance needs. Evaluation is the held-out flow loss at fixed
times and noise (cheap and comparable across runs); sample quality (judge accuracy and Fréchet
distance) is `vlmoe.eval.image_generation.ClassConditionalEvaluator`. `predict` ignores the
input image: it generates `num` images from the condition given as text (a label name or
index, or a caption).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vlmoe.data.sample import Sample
from vlmoe.eval.image_generation import FlowLossEvaluator, to_model_channels
from vlmoe.eval.routing import RoutingEvaluator
from vlmoe.models.flow import (
    FlowConfig,
    flow_loss,
    generate_images,
    generation_conditions,
    interpolate,
)
from vlmoe.tasks.base import Example, Prediction, StepOutput, Task
from vlmoe.tasks.registry import register_task


class _FlowTask(Task):
    architectures = ("dit",)
    headline = ("flow/flow_loss",)
    predicts = ("image",)
    flow = FlowConfig()

    def conditions(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    @property
    def ema_decay(self) -> float:
        return self.flow.ema_decay

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        images = to_model_channels(batch["images"], model.config.in_channels)
        out = flow_loss(model, images, self.flow, **self.conditions(batch))
        return StepOutput(out.loss, {}, out.moe_aux, images.shape[0])

    def evaluators(self, loader: Any) -> dict[str, Any]:
        return {
            "flow": FlowLossEvaluator(loader, self.conditions),
            "routing": RoutingEvaluator(loader, forward=self.noisy_forward),
        }

    def noisy_forward(self, model: nn.Module, batch: dict[str, Any]) -> Any:
        """The model's output on the batch's images noised half-way (t = 0.5, fixed noise):
        the routing statistics of a denoiser at mid noise level."""
        images = to_model_channels(batch["images"], model.config.in_channels)
        return mid_noise_forward(model, images, self.conditions(batch))

    def _predict(
        self,
        model: nn.Module,
        text: str,
        cond: dict[str, Any],
        *,
        num: int = 1,
        steps: int | None = None,
        cfg: float | None = None,
        sampler: str | None = None,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
        **_: Any,
    ) -> Prediction:
        """`num` images (default 1) for one condition, sampled with `steps`, `cfg`, `sampler`
        (None: the task's `flow` settings, a loaded run's own) and `seed` (`progress(step,
        steps)` after each step, as `generate_images` calls it).

        `extra["images"]` holds them as (S, S, 3) uint8 arrays (`extra["image"]` is the first);
        `output` is the model's forward over the first one noised half-way (t = 0.5, seeded
        noise), whose routing is what `noisy_forward` measures in evaluation."""
        images = generate_images(
            model,
            num,
            tokenizer=self.tokenizer,
            steps=self.flow.steps if steps is None else steps,
            sampler=sampler or self.flow.sampler,  # type: ignore[arg-type]
            cfg_scale=self.flow.cfg_scale if cfg is None else cfg,
            seed=seed,
            progress=progress,
            **cond,
        )  # (num, C, S, S) in [-1, 1]
        rgbs = []
        for image in images:
            rgb = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
            rgbs.append(np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb)
        first = generation_conditions(model, 1, tokenizer=self.tokenizer, **cond)
        output = mid_noise_forward(model, images[:1], first)
        tokens = self.token_strings(first["input_ids"][0].tolist()) if "input_ids" in first else []
        return Prediction(
            "image",
            text,
            extra={"image": rgbs[0], "images": rgbs},
            output=output,
            tokens=tokens,
        )


def mid_noise_forward(model: nn.Module, images: Tensor, cond: dict[str, Any]) -> Any:
    """The model's output on `images` (B, C, S, S) noised half-way (t = 0.5, noise seeded 0)
    under `cond` (model keyword arguments)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=g).to(images.device)
    t_B = torch.full((images.shape[0],), 0.5, device=images.device)
    x_t, _ = interpolate(images, noise, t_B)
    return model(x_t, t_B, **cond)


@register_task
class ImageGeneration(_FlowTask):
    """Class-conditional generation: one example per labelled image."""

    name = "image-generation"
    default_for = ("dit",)

    def model_sizes(self) -> dict[str, int]:
        return {"num_classes": len(self.info.label_names)} if self.info.label_names else {}

    def examples(self, dataset: Any, split: str) -> list[Example]:
        return [Example(i) for i in range(len(dataset)) if dataset.describe(i).label is not None]

    def collate(self, items: Sequence[tuple[Sample, Example]]) -> dict[str, Any]:
        return {"images": self.images(items), "label": self.labels(items)}

    def conditions(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"labels": batch["label"]}

    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        image: np.ndarray | None = None,
        text: str | None = None,
        **options: Any,
    ) -> Prediction:
        """Images of the class named by `text` (a label name, or its index as text); options
        `num`, `steps`, `cfg`, `sampler`, `seed`, `progress` (see `_FlowTask._predict`)."""
        names = self.info.label_names
        if text in names:
            label = names.index(text)
        elif text is not None and text.strip().isdigit() and int(text) < len(names):
            label = int(text)
        else:
            raise ValueError(
                f"give the class to generate as text: one of {names} or an index in "
                f"[0, {len(names)}); got {text!r}"
            )
        return self._predict(model, names[label], {"label": label}, **options)


@register_task
class TextToImage(_FlowTask):
    """Caption-conditioned generation: one example per (image, caption)."""

    name = "text-to-image"
    needs_text = True

    def examples(self, dataset: Any, split: str) -> list[Example]:
        return [
            Example(i, part)
            for i in range(len(dataset))
            for part in range(len(dataset.describe(i).captions))
        ]

    def collate(self, items: Sequence[tuple[Sample, Example]]) -> dict[str, Any]:
        captions = [s.captions[max(e.part, 0)] for s, e in items]
        return {"images": self.images(items), **self.encode(captions)}

    def conditions(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        image: np.ndarray | None = None,
        text: str | None = None,
        **options: Any,
    ) -> Prediction:
        """Images of the caption `text`; options as `ImageGeneration.predict`."""
        if not text:
            raise ValueError("give the caption of the image to generate as text")
        return self._predict(model, text, {"prompt": text}, **options)
