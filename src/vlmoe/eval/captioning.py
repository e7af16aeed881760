"""Captioning BLEU-4: corpus BLEU (Papineni et al. 2002) with multiple references, via sacrebleu.

sacrebleu (Post 2018, "A Call for Clarity in Reporting BLEU Scores") fixes the tokenization
(`13a`) and smoothing so that scores are comparable. Scores are on sacrebleu's 0-100 scale.
A hypothesis may have any number of references; sacrebleu's reference streams are padded with
`None` where an example has fewer than the most.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import sacrebleu
import torch

from vlmoe.eval.common import batch_field, model_device, to_device

CaptionFn = Callable[[torch.nn.Module, dict], Sequence[str]]


def reference_streams(references: Sequence[str | Sequence[str]]) -> list[list[str | None]]:
    """Per-example reference lists → sacrebleu's reference streams (padded with None)."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    for i, r in enumerate(refs):
        if not r:
            raise ValueError(f"bleu4: example {i} has no reference caption")
    width = max((len(r) for r in refs), default=0)
    return [[r[j] if j < len(r) else None for r in refs] for j in range(width)]


def bleu4(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus BLEU-4 (0-100) of hypotheses against one or more references each.

    Args:
        hypotheses: one generated caption per example.
        references: per example, a reference string or a list of them.
    """
    if len(hypotheses) != len(references):
        raise ValueError(
            f"bleu4: {len(hypotheses)} hypotheses but {len(references)} reference sets"
        )
    if not hypotheses:
        return 0.0
    result = sacrebleu.corpus_bleu(list(hypotheses), reference_streams(references), force=True)
    return float(result.score)


class CaptioningEvaluator:
    """Corpus BLEU-4 of generated captions over a DataLoader.

    Args:
        loader: yields dict batches with the reference caption(s) per example under
            `reference_key` (a string or list of strings per example).
        caption_fn: `(model, batch) -> list[str]`, one generated caption per example (for the
            decoder model: greedy generation with the KV cache).

    After `run`, `samples` holds the first few (hypothesis, references) pairs for a report.
    """

    def __init__(
        self,
        loader: Iterable[dict],
        caption_fn: CaptionFn,
        *,
        reference_key: str = "captions",
    ) -> None:
        self.loader = loader
        self.caption_fn = caption_fn
        self.reference_key = reference_key
        self.samples: list[tuple[str, list[str]]] = []

    @torch.no_grad()
    def run(self, model: torch.nn.Module) -> Iterator[tuple[str, float]]:
        device = model_device(model)
        hyps: list[str] = []
        refs: list[str | Sequence[str]] = []
        for batch in self.loader:
            batch = to_device(batch, device)
            preds = list(self.caption_fn(model, batch))
            batch_refs = list(batch_field(batch, self.reference_key, "CaptioningEvaluator"))
            if len(preds) != len(batch_refs):
                raise ValueError(
                    f"caption_fn returned {len(preds)} captions for a batch of {len(batch_refs)}"
                )
            hyps += preds
            refs += batch_refs
        self.samples = [
            (h, [r] if isinstance(r, str) else list(r)) for h, r in zip(hyps[:5], refs[:5])
        ]
        yield "bleu4", bleu4(hyps, refs)
        yield "num_examples", len(hyps)
