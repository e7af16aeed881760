"""Evaluation: one evaluator a file, each with `run(model) -> Iterator[(name, value)]`
(big_vision's pattern), and a runner that collects them into `eval.json`.

- `classification`: accuracy (top-k) of a class head; zero-shot accuracy from text prompts.
- `vqa`: exact-match accuracy after answer normalization.
- `retrieval`: recall@1/5/10 image->text and text->image, several captions per image.
- `captioning`: corpus BLEU-4 with multiple references (sacrebleu).
- `routing`: per MoE layer and modality: tokens per expert, drop rate, router entropy, dead
  and starved experts (from `vlmoe.moe.stats`); `starved_experts_warning` for the trainer.
"""

from vlmoe.eval.captioning import CaptioningEvaluator, bleu4
from vlmoe.eval.classification import (
    ClassificationEvaluator,
    ZeroShotEvaluator,
    accuracy,
    zero_shot_logits,
    zero_shot_weights,
)
from vlmoe.eval.common import Evaluator
from vlmoe.eval.retrieval import RetrievalEvaluator, recall_at_k, retrieval_metrics
from vlmoe.eval.routing import (
    RoutingEvaluator,
    RoutingStats,
    moe_layer_names,
    starved_experts_warning,
)
from vlmoe.eval.runner import evaluate, run_evaluators, write_eval_json
from vlmoe.eval.vqa import VQAEvaluator, answers_from_logits, normalize_answer, vqa_accuracy

__all__ = [
    "CaptioningEvaluator",
    "ClassificationEvaluator",
    "Evaluator",
    "RetrievalEvaluator",
    "RoutingEvaluator",
    "RoutingStats",
    "VQAEvaluator",
    "ZeroShotEvaluator",
    "accuracy",
    "answers_from_logits",
    "bleu4",
    "evaluate",
    "moe_layer_names",
    "normalize_answer",
    "recall_at_k",
    "retrieval_metrics",
    "run_evaluators",
    "starved_experts_warning",
    "vqa_accuracy",
    "write_eval_json",
    "zero_shot_logits",
    "zero_shot_weights",
]
