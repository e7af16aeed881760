"""Training: configs, the trainer, checkpoints.

`Trainer(model, objective, dataset, collate_fn, cfg, run_dir).fit(resume=...)` trains any
module whose objective (a task's `loss`) returns a `StepOutput`; `save_checkpoint` /
`load_checkpoint` are the atomic, pickle-free checkpoint I/O it uses. A whole run (data, task,
model, evaluation) is `vlmoe.recipes.run.train`:

    from vlmoe.recipes.run import train
    from vlmoe.train import RunConfig, apply_overrides
    cfg = apply_overrides(RunConfig(), ["model.preset=fusion-debug-moe", "train.steps=200"])
    result = train(cfg, "runs/fusion")          # -> TrainResult (losses, eval, throughput)
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
from vlmoe.train.trainer import NonFiniteError, StepOutput, Trainer, TrainingError, TrainResult

__all__ = [
    "CheckpointError",
    "DataSelection",
    "EvalConfig",
    "ModelSelection",
    "MoELossConfig",
    "NonFiniteError",
    "OptimizerConfig",
    "RunConfig",
    "ScheduleConfig",
    "StageConfig",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "apply_overrides",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]
