"""Captioning BLEU-4: corpus BLEU (Papineni et al. 2002) with multiple references, via sacrebleu.

sacrebleu (Post 2018, "A Call for Clarity in Reporting BLEU Scores") fixes the tokenization
(`13a`) and smoothing so that scores are comparable. Scores are on sacrebleu's 0-100 scale.
A hypothesis may have any number of references; sacrebleu's reference streams are padded with
`None` where an example has fewer than the most.

On the scene world BLEU says little about what a caption gets right, so the evaluator also
scores attributes (`attribute_scores`): the reference listing (the scene's canonical caption:
every object's size, colour and shape, left to right) and the generated caption are read back
into objects (`vlmoe.data.grammar.parse_listing`), and the evaluator reports, over held-out
images, `attr/count` (as many objects as in the scene), `attr/<size|colour|shape>` (per scene
object, the generated object at its left-to-right position has it right), `attr/objects` (the
same set of objects, any order) and `attr/exact` (every object, every attribute, in order). A
generated caption that is not a listing scores zero on all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import sacrebleu
import torch

from vlmoe.data.grammar import parse_listing
from vlmoe.eval.common import batch_field, model_device, to_device

CaptionFn = Callable[[torch.nn.Module, dict], Sequence[str]]
ATTRIBUTES = ("size", "colour", "shape")


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


def attribute_scores(
    hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]
) -> dict[str, float] | None:
    """Attribute accuracies of generated scene captions (see the module docstring), or None
    when no example has a listing among its references (not scene captions).

    Examples without a reference listing are skipped. `attr/<size|colour|shape>` average over
    the scene objects, the others over images; `num_scored` says how many images counted.
    """
    per_object = {a: [] for a in ATTRIBUTES}
    per_image: dict[str, list[bool]] = {"count": [], "objects": [], "exact": []}
    for hyp, refs in zip(hypotheses, references, strict=True):
        refs = [refs] if isinstance(refs, str) else refs
        truth = next((t for t in map(parse_listing, refs) if t is not None), None)
        if truth is None:
            continue
        said = parse_listing(hyp) or []
        per_image["count"].append(len(said) == len(truth))
        per_image["objects"].append(sorted(said) == sorted(truth))
        per_image["exact"].append(said == truth)
        for i, obj in enumerate(truth):
            for j, name in enumerate(ATTRIBUTES):
                per_object[name].append(i < len(said) and said[i][j] == obj[j])
    if not per_image["count"]:
        return None
    scores = {f"attr/{k}": sum(v) / len(v) for k, v in {**per_image, **per_object}.items()}
    return scores | {"attr/num_scored": len(per_image["count"])}


class CaptioningEvaluator:
    """Corpus BLEU-4 of generated captions over a DataLoader, and attribute accuracies when
    the references are scene captions (`attribute_scores`).

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
        yield from (attribute_scores(hyps, refs) or {}).items()
        yield "num_examples", len(hyps)
