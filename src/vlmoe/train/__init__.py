"""Training: configs, the trainer, objectives, checkpoints, and the run pipeline.

    from vlmoe.train import RunConfig, apply_overrides, train
    cfg = apply_overrides(RunConfig(), ["model.preset=fusion-debug-moe", "train.steps=200"])
    result = train(cfg, "runs/fusion")          # -> TrainResult (losses, eval, throughput)

Lower level: `Trainer(model, objective, dataset, collate_fn, cfg, run_dir).fit(resume=...)`
trains any module whose objective returns a `StepOutput`; `save_checkpoint` /
`load_checkpoint` are the atomic, pickle-free checkpoint I/O it uses.
"""

from vlmoe.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from vlmoe.train.config import (
    DataSelection,
    EvalConfig,
    ModelSelection,
    MoELossConfig,
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
    StageConfig,
    TrainConfig,
    apply_overrides,
)
from vlmoe.train.inference import Prediction, generate, predict
from vlmoe.train.run import (
    TaskInfo,
    evaluate,
    load_trained,
    prepare,
    prepare_eval,
    save_model,
    train,
)
from vlmoe.train.trainer import NonFiniteError, StepOutput, Trainer, TrainingError, TrainResult

__all__ = [
    "CheckpointError",
    "DataSelection",
    "EvalConfig",
    "ModelSelection",
    "MoELossConfig",
    "NonFiniteError",
    "OptimizerConfig",
    "Prediction",
    "RunConfig",
    "ScheduleConfig",
    "StageConfig",
    "StepOutput",
    "TaskInfo",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "apply_overrides",
    "evaluate",
    "generate",
    "latest_checkpoint",
    "load_checkpoint",
    "load_trained",
    "predict",
    "prepare",
    "prepare_eval",
    "save_checkpoint",
    "save_model",
    "train",
]
