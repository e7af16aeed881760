"""VQA accuracy: exact match of predicted and reference answers after normalization.

Normalization follows the spirit of the VQA v2 evaluation script (Antol et al. 2015, "VQA:
Visual Question Answering"; Goyal et al. 2017): lowercase, drop punctuation and the articles
"a", "an", "the", collapse whitespace, and write number words as digits ("two" == "2"). A
prediction is correct when it equals any of the example's reference answers. (The VQA v2
"min(#humans/3, 1)" soft score needs ten human answers per question, which the datasets here
do not have.)

The metric math is pure functions on strings; `VQAEvaluator` runs a model over a DataLoader
(answer classification or generation, through an `answer_fn`) and yields `(name, value)` pairs.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from vlmoe.eval.common import batch_field, default_forward, get_field, model_device, to_device

_ZERO_TO_TWENTY = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
NUMBER_WORDS: dict[str, str] = {word: str(i) for i, word in enumerate(_ZERO_TO_TWENTY.split(" "))}
NUMBER_WORDS.update({"none": "0", "thirty": "30", "forty": "40", "fifty": "50", "hundred": "100"})
ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
# A comma or point between digits is part of a number ("1,000", "3.5"), not punctuation.
_NUMBER_SEP = re.compile(r"(?<=\d)[,.](?=\d)")

AnswerFn = Callable[[torch.nn.Module, dict], Sequence[str]]


def normalize_answer(answer: str) -> str:
    """Lowercase, strip punctuation and articles, number words to digits, single spaces."""
    text = _NUMBER_SEP.sub(lambda m: "" if m.group() == "," else "\0", answer.lower())
    text = _PUNCT.sub(" ", text).replace("\0", ".")
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(words)


def answer_correct(prediction: str, references: str | Sequence[str]) -> bool:
    """True when the normalized prediction equals any normalized reference."""
    refs = [references] if isinstance(references, str) else references
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(r) for r in refs)


def vqa_accuracy(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Fraction of predictions that match one of their references (0.0 for no examples)."""
    if len(predictions) != len(references):
        raise ValueError(
            f"vqa_accuracy: {len(predictions)} predictions but {len(references)} reference sets"
        )
    if not predictions:
        return 0.0
    return sum(answer_correct(p, r) for p, r in zip(predictions, references)) / len(predictions)


def answers_from_logits(answer_vocab: Sequence[str], logits_field: str = "vqa_logits") -> AnswerFn:
    """An `answer_fn` for VQA as answer classification: argmax over `answer_vocab`."""
    vocab = list(answer_vocab)

    def answer_fn(model: torch.nn.Module, batch: dict) -> list[str]:
        logits_BA = get_field(default_forward(model, batch), logits_field)
        return [vocab[i] for i in logits_BA.argmax(dim=-1).tolist()]

    return answer_fn


class VQAEvaluator:
    """Exact-match VQA accuracy over a DataLoader.

    Args:
        loader: yields dict batches; the reference answers (a string or a list of strings per
            example) are under `answer_key`.
        answer_fn: `(model, batch) -> list[str]`, one predicted answer per example (argmax over an
            answer vocabulary for the fusion model, or generated text for the decoder).
        question_type_key: when batches carry it (a string per example), accuracy is also
            reported per question type as `accuracy/<type>`.
    """

    def __init__(
        self,
        loader: Iterable[dict],
        answer_fn: AnswerFn,
        *,
        answer_key: str = "answer",
        question_type_key: str = "question_type",
    ) -> None:
        self.loader = loader
        self.answer_fn = answer_fn
        self.answer_key = answer_key
        self.question_type_key = question_type_key

    @torch.no_grad()
    def run(self, model: torch.nn.Module) -> Iterator[tuple[str, float]]:
        device = model_device(model)
        hits: list[bool] = []
        by_type: dict[str, list[bool]] = {}
        for batch in self.loader:
            batch = to_device(batch, device)
            preds = list(self.answer_fn(model, batch))
            refs = batch_field(batch, self.answer_key, "VQAEvaluator")
            types = batch.get(self.question_type_key)
            for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
                ok = answer_correct(p, r)
                hits.append(ok)
                if types is not None:
                    by_type.setdefault(str(types[i]), []).append(ok)
        yield "accuracy", sum(hits) / len(hits) if hits else 0.0
        for qtype in sorted(by_type):
            yield f"accuracy/{qtype}", sum(by_type[qtype]) / len(by_type[qtype])
        yield "num_examples", len(hits)
