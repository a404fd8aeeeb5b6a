"""The recipe schema: one frozen dataclass per recipe section.

Every field carries its default, a one-line description of the practice it encodes and,
where it applies, the allowed choices or range. The loader in :mod:`nnrun.recipe.load` turns YAML
into these objects and validates them from this metadata; the README's recipe reference is
checked against it by a test, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from nnrun.recipe.fields import (
    MAX_COUNT,
    MAX_DURATION,
    MAX_EPOCHS,
    MAX_FLOAT,
    MAX_INTERVAL,
    MAX_LAYERS,
    MAX_SEED,
    MAX_WIDTH,
    opt,
)
from nnrun.recipe.tables import SOURCES

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "gelu", "elu", "silu")
DATA_SOURCES = tuple(SOURCES)
NORMS = ("batch", "group", "layer", "instance", "none")
INITS = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
         "orthogonal", "normal", "lsuv", "zeros")
OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adam", "adamw")
LOSSES = ("cross_entropy", "mse", "l1", "smooth_l1")

@dataclass(frozen=True)
class DataConfig:
    source: str = opt("digits", "Where the examples come from; `digits` ships inside nnrun.",
                      choices=DATA_SOURCES)
    path: str | None = opt(None, "File or folder for file-based sources (relative paths are "
                                    "resolved against the recipe's folder).")
    download: bool = opt(True, "mnist, fashion-mnist, cifar10 without data.path (or with the shipped `data/<set>` "
                               "that does not exist): download the set into the cache, SHA-256 verified, when "
                               "it is not there yet; false: never download (offline machines).")
    batch_size: int = opt(64, "Mini-batch size for training.", min=1, max=MAX_COUNT)
    eval_batch_size: int = opt(512, "Batch size for evaluation and prediction (no gradients, so larger).",
                               min=1, max=MAX_COUNT)
    shuffle: bool = opt(True, "A fresh seeded permutation of the training set every epoch.")
    drop_last: bool = opt(False, "Drop the last incomplete training batch (avoids a batch of 1 with BatchNorm).")
    val_fraction: float = opt(0.1, "Held-out validation share carved from the training set with the seed; "
                                   "tune on it, never on the test split.", min=0.0, max=0.9)
    normalize: str = opt("standardize", "Input whitening with training-split statistics only "
                                        "(stored in checkpoints, re-applied at prediction).",
                         choices=("standardize", "minmax", "none"))
    tanh_scale: float | None = opt(None, "Squash unbounded inputs as tanh(x / C) after normalizing.",
                                      min=0.0, min_exclusive=True, max=MAX_FLOAT)
    limit: int | None = opt(None, "Use only the first N training examples (quick experiments).", min=1,
                            max=1_000_000_000)
    split_seed: int | None = opt(None, "Seed of the validation carve (default: `seed`); fixed across the "
                                          "members of `ensemble.seeds`.", min=0,
                                 max=MAX_SEED)
    task: str = opt("auto", "classification or regression; auto: classification when labels are integers.",
                    choices=("auto", "classification", "regression"))
    label_column: str = opt("label", "csv: the column holding the target.")
    feature_columns: list[str] | None = opt(None, "csv: the input columns (default: all but the label).")
    factory: str | None = opt(None, "python: `module:function` returning (train, val or None, test or None) "
                                       "datasets of (x, y) pairs or (x, y) tensor tuples.")
    num_workers: int = opt(0, "DataLoader worker processes for file-backed (streamed) sources.", min=0, max=256)
    cache: str = opt("auto", "Streamed sources: decode every example once (in parallel) and batch by index like "
                             "in-memory data, same numbers bit for bit. auto: image-folder splits that fit "
                             "`cache_max_mb`; memory: any streamed source (a python dataset whose items are "
                             "fixed: no random augmentation); none: read the files every epoch.",
                     choices=("auto", "memory", "none"))
    cache_max_mb: int = opt(4096, "data.cache auto: the most MiB the decoded float32 inputs of all cached splits "
                                  "may take (else stream as with none).", min=1, max=MAX_COUNT)


@dataclass(frozen=True)
class UnfreezeConfig:
    epoch: float = opt(1, "Epoch (0-based count of completed epochs) from which the match trains.", min=0,
                       max=MAX_EPOCHS)
    match: str = opt("*", "Glob on parameter names.")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = opt("mlp", "Network family.", choices=("mlp", "cnn", "resnet", "python"))
    hidden: list[int] = opt([128, 64], "mlp: hidden layer widths.", item_min=1, item_max=MAX_WIDTH,
                            max_items=MAX_LAYERS)
    activation: str = opt("relu", "Nonlinearity after each (normalized) hidden layer; none on the output.",
                          choices=ACTIVATIONS)
    dropout: float = opt(0.0, "Dropout probability after each hidden activation.", min=0.0, max=0.95)
    norm: str = opt("none", "Normalization layer placed after each linear/conv layer and before its "
                            "nonlinearity (BatchNorm paper order).", choices=NORMS)
    groups: int = opt(8, "GroupNorm groups; must divide every normalized layer's width.", min=1, max=MAX_WIDTH)
    channels: list[int] = opt([32, 64], "cnn: conv channels per stage (each stage: conv, norm, act, pool).",
                              item_min=1, item_max=MAX_WIDTH, max_items=100)
    kernel: int = opt(3, "cnn: convolution kernel size (odd keeps the spatial size).", min=1, max=64)
    pool: str = opt("max", "cnn: 2x2 pooling after each stage.", choices=("max", "avg", "none"))
    head_hidden: int = opt(128, "cnn: width of the linear layer before the output (0: none).", min=0,
                           max=MAX_WIDTH)
    depth: int = opt(20, "resnet: total layers, 6n+2 (20, 32, 44, 56...), three stages of n basic blocks.",
                     min=8, max=2000)
    width: int = opt(16, "resnet: channels of the first stage (doubled at each of the next two).", min=1,
                     max=MAX_WIDTH // 4)
    factory: str | None = opt(None, "python: `module:factory` returning an nn.Module that outputs logits.")
    kwargs: dict = opt({}, "python: keyword arguments passed to the factory.")
    freeze: list[str] = opt([], "Globs of parameter names to freeze (their values stay exactly as loaded).")
    unfreeze: list[UnfreezeConfig] = opt([], "Gradual unfreezing: `{epoch: E, match: glob}` unfreezes "
                                             "matching frozen parameters from epoch E on.")
    freeze_bn: bool = opt(False, "Keep BatchNorm layers whose parameters are all frozen in eval mode "
                                 "(running statistics stay fixed too).")


@dataclass(frozen=True)
class InitConfig:
    weights: str = opt("kaiming_normal", "Weight init of linear/conv layers; zeros is refused (symmetry).",
                       choices=INITS)
    gain: float | None = opt(None, "xavier/orthogonal gain; default: the activation's recommended gain.",
                                min=0.0, min_exclusive=True, max=MAX_FLOAT)
    mode: str = opt("fan_in", "kaiming: preserve forward (fan_in) or backward (fan_out) variance.",
                    choices=("fan_in", "fan_out"))
    nonlinearity: str = opt("auto", "kaiming/xavier/orthogonal: the gain's nonlinearity (auto: model.activation).",
                            choices=("auto",) + ACTIVATIONS + ("linear",))
    std: float = opt(0.02, "normal: standard deviation.", min=0.0, min_exclusive=True, max=MAX_FLOAT)
    bias: float = opt(0.0, "Constant for every bias.", min=-MAX_FLOAT, max=MAX_FLOAT)
    lsuv_tol: float = opt(0.1, "lsuv: tolerance on each layer's output std around 1.", min=0.0,
                          min_exclusive=True, max=MAX_FLOAT)
    lsuv_iters: int = opt(10, "lsuv: maximum rescaling attempts per layer.", min=1, max=1000)
    from_: str | None = field(default=None, metadata={
        "key": "from", "doc": "Load weights from an nnrun checkpoint or a state-dict file before training "
                              "(non-strict, transfer learning); missing and unexpected keys are reported."})


@dataclass(frozen=True)
class GroupConfig:
    match: str = opt("*", "Glob on parameter names (e.g. `body.0.*`, `head.*`); first match wins.")
    lr_mult: float = opt(1.0, "The group's rate is optimizer.lr times this.", min=0.0, max=MAX_FLOAT)
    weight_decay: float | None = opt(None, "The group's weight decay (default optimizer.weight_decay).",
                                        min=0.0, max=MAX_FLOAT)
    name: str | None = opt(None, "Name in logs (`lr/<name>`); default g<index>.")
    clip_norm: float | None = opt(None, "clip.policy per_param_norm: this group's per-tensor bound.",
                                     min=0.0, min_exclusive=True, max=MAX_FLOAT)


@dataclass(frozen=True)
class DiscriminativeConfig:
    groups: int = opt(3, "Consecutive layer groups from input to output.", min=2, max=100)
    factor: float = opt(3.0, "Each earlier group gets a rate this many times lower (3-10x is usual).",
                        min=1.0, max=100.0)


@dataclass(frozen=True)
class MomentumScheduleConfig:
    start: float = opt(0.5, "Momentum (SGD/RMSprop) or beta1 (Adam) at the start.", min=0.0, max=1.0)
    end: float = opt(0.99, "Value reached after `epochs` and kept.", min=0.0, max=1.0)
    epochs: float = opt(5, "Length of the linear ramp, in epochs.", min=0.0, min_exclusive=True, max=MAX_EPOCHS)


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = opt("adam", "Update rule.", choices=OPTIMIZERS)
    lr: float = opt(1e-3, "Base learning rate (find it with `nnrun lr-find`).", min=0.0, min_exclusive=True,
                    max=MAX_FLOAT)
    momentum: float = opt(0.9, "sgd/rmsprop: momentum (0 disables).", min=0.0, max=1.0)
    nesterov: bool = opt(False, "sgd: Nesterov momentum (needs momentum > 0).")
    weight_decay: float = opt(0.0, "L2 penalty (adam, sgd, ...) or decoupled decay (adamw).", min=0.0, max=MAX_FLOAT)
    betas: list[float] = opt([0.9, 0.999], "adam/adamw: decay rates of the first and second moments.",
                             item_min=0.0, item_max=1.0, max_items=2)
    eps: float = opt(1e-8, "adam/adamw/rmsprop/adagrad: denominator term.", min=0.0, min_exclusive=True, max=MAX_FLOAT)
    alpha: float = opt(0.99, "rmsprop: smoothing constant of the squared-gradient average.", min=0.0, max=1.0)
    centered: bool = opt(False, "rmsprop: normalize by the gradient's estimated variance.")
    fused: str = opt("auto", "Fused/foreach kernels: auto uses the fastest numerically equivalent one.",
                     choices=("auto", "on", "off"))
    groups: list[GroupConfig] = opt([], "Parameter groups with their own rate multiplier and weight decay "
                                        "(differential learning rates); unmatched parameters form `default`.")
    no_decay: list[str] = opt([], "No weight decay on these kinds: `bias` (all 1-D biases), `norm` "
                                  "(normalization layers' weights and biases).")
    discriminative: DiscriminativeConfig | None = opt(None, "Split the layers into K groups, each earlier "
                                                               "group with an F-times lower rate (fine-tuning).")
    momentum_schedule: MomentumScheduleConfig | None = opt(None, "Ramp momentum/beta1 linearly, e.g. "
                                                                    "0.5 to 0.99 over 5 epochs.")


SCHEDULES = ("constant", "step", "multistep", "exponential", "inverse_time", "plateau", "cosine", "sgdr",
             "cyclic", "one_cycle")


@dataclass(frozen=True)
class PlateauConfig:
    factor: float = opt(0.1, "Multiply the rate by this when the monitored metric stalls.", min=0.0,
                        max=1.0, min_exclusive=True)
    patience: int = opt(10, "Evaluations without improvement before cutting the rate.", min=0, max=MAX_COUNT)
    threshold: float = opt(1e-4, "Smallest change that counts as an improvement.", min=0.0, max=MAX_FLOAT)
    threshold_mode: str = opt("rel", "rel: relative to the best value; abs: absolute (use for metrics <= 0).",
                              choices=("rel", "abs"))
    cooldown: int = opt(0, "Evaluations to wait after a cut before counting again.", min=0, max=MAX_COUNT)
    min_lr: float = opt(0.0, "No cut takes the base rate below this (other groups keep their ratio).", min=0.0,
                        max=MAX_FLOAT)


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = opt("constant", "Learning-rate schedule, stepped every optimizer step.", choices=SCHEDULES)
    unit: str = opt("epochs", "Unit of every duration below (fractions of epochs allowed).",
                    choices=("epochs", "steps"))
    step_size: float = opt(5, "step: multiply by gamma every step_size; cyclic: half-cycle length "
                              "(2-10 epochs' worth of steps is the usual advice); at least one optimizer step.",
                           min=0.0, min_exclusive=True, max=MAX_DURATION)
    gamma: float | None = opt(None, "step/multistep factor (default 0.1); cyclic exp_range: amplitude "
                                       "decay per step (default 0.99994); a decay, so at most 1.", min=0.0,
                              min_exclusive=True, max=1.0)
    milestones: list[float] = opt([], "multistep: times at which the rate is multiplied by gamma.", item_min=0,
                                  item_max=MAX_DURATION, max_items=MAX_LAYERS)
    k: float = opt(0.1, "exponential: a0*exp(-k t); inverse_time: a0/(1 + k t), t in `unit`.", min=0.0, max=MAX_FLOAT)
    min_lr: float = opt(0.0, "cosine/sgdr: the rate at the bottom of each cosine.", min=0.0, max=MAX_FLOAT)
    cycle_len: float = opt(10, "sgdr: length of the first cycle (at least one optimizer step).", min=0.0,
                           min_exclusive=True, max=MAX_DURATION)
    cycle_mult: float = opt(1.0, "sgdr: each cycle is this many times longer than the previous.", min=1.0,
                            max=100.0)
    cycle_decay: float = opt(1.0, "sgdr: the peak rate is multiplied by this at every restart.", min=0.0,
                             max=1.0, min_exclusive=True)
    mode: str = opt("triangular", "cyclic: triangular, triangular2 (amplitude halves each cycle) or "
                                  "exp_range.", choices=("triangular", "triangular2", "exp_range"))
    base_lr: float | None = opt(None, "cyclic: lower bound (default max_lr / 4).", min=0.0, max=MAX_FLOAT)
    max_lr: float | None = opt(None, "cyclic/one_cycle: upper bound (default optimizer.lr).", min=0.0,
                                  min_exclusive=True, max=MAX_FLOAT)
    pct_start: float = opt(0.3, "one_cycle: share of the run spent rising to max_lr.", min=0.0, max=1.0,
                           min_exclusive=True)
    div_factor: float = opt(25.0, "one_cycle: the start rate is max_lr / div_factor.", min=1.0, max=MAX_FLOAT)
    final_div_factor: float = opt(1e4, "one_cycle: the final rate is start rate / final_div_factor.", min=1.0,
                                  max=MAX_FLOAT)
    anneal: str = opt("cos", "one_cycle: shape of both phases.", choices=("cos", "linear"))
    cycle_momentum: bool = opt(True, "one_cycle: cycle momentum (SGD) or beta1 (Adam) inversely to the rate.")
    base_momentum: float = opt(0.85, "one_cycle: momentum at the peak rate.", min=0.0, max=1.0)
    max_momentum: float = opt(0.95, "one_cycle: momentum at the lowest rates.", min=0.0, max=1.0)
    warmup: float = opt(0, "Linear warmup before the schedule starts (its clock starts after warmup).",
                        min=0.0, max=MAX_DURATION)
    warmup_start: float = opt(0.0, "Warmup starts at this fraction of the rate.", min=0.0, max=1.0)
    final_decay: float = opt(0.0, "Last fraction of training that decays linearly to final_lr "
                                  "(lower the rate briefly before the end).", min=0.0, max=1.0)
    final_lr: float = opt(0.0, "The rate final_decay ends at.", min=0.0, max=MAX_FLOAT)
    on_plateau: PlateauConfig | None = opt(None, "Cut any schedule when train.monitor stalls "
                                                    "(`name: plateau` uses it on a constant rate).")


@dataclass(frozen=True)
class ClipConfig:
    policy: str = opt("none", "Gradient clip policy, applied once per optimizer step (after fp16 unscaling).",
                      choices=("none", "global_norm", "per_param_norm", "value", "agc", "autoclip"))
    max_norm: float = opt(1.0, "global_norm: bound on the norm of all gradients; per_param_norm: on each "
                               "tensor's norm (a group's clip_norm overrides it).", min=0.0, min_exclusive=True,
                          max=MAX_FLOAT)
    norm_type: float = opt(2.0, "The p of the p-norm (inf allowed as .inf).", min=0.0, min_exclusive=True,
                           allow_inf=True, max=MAX_FLOAT)
    value: float = opt(1.0, "value: clamp every gradient element to [-value, value].", min=0.0, min_exclusive=True,
                       max=MAX_FLOAT)
    clipping: float = opt(0.01, "agc: largest allowed unit-wise ratio of gradient norm to weight norm "
                                "(smaller for larger batches).", min=0.0, min_exclusive=True, max=MAX_FLOAT)
    eps: float = opt(1e-3, "agc: floor of the weight norm, so zero-initialized units can move.", min=0.0,
                     min_exclusive=True, max=MAX_FLOAT)
    agc_exclude: list[str] = opt(["head.*"], "agc: parameters never clipped (the output layer, as the AGC "
                                             "paper advises).")
    percentile: float = opt(10.0, "autoclip: clip to this percentile of the gradient-norm history.", min=0.0,
                            max=100.0)
    window: int = opt(1000, "autoclip: length of the history (a ring buffer saved in checkpoints).", min=1,
                      max=MAX_COUNT)
    accumulate: int = opt(1, "Sum gradients of N micro-batches per optimizer step, each weighted by its share "
                             "of the examples: the step equals one on an N-times larger batch.", min=1,
                         max=MAX_COUNT)
    layer_norms_every: int = opt(0, "Log per-layer gradient norms every N optimizer steps (0: off).", min=0,
                                 max=MAX_INTERVAL)


@dataclass(frozen=True)
class EnsembleConfig:
    strategy: str = opt("none", "Members or averaged weights from one run: checkpoints (every N epochs), "
                                "snapshots (each LR cycle's end), ema (Polyak average), swa.",
                        choices=("none", "checkpoints", "snapshots", "ema", "swa"))
    every: int = opt(1, "checkpoints: keep a member every N epochs (checkpoints/members/).", min=1,
                     max=MAX_COUNT)
    decay: float = opt(0.999, "ema: w_ema <- decay*w_ema + (1-decay)*w after every optimizer step.", min=0.0,
                       max=1.0, min_exclusive=True)
    ema_warmup: bool = opt(True, "ema: ramp the decay as min(decay, (1+n)/(10+n)) so early averages are "
                                 "not dominated by the random init.")
    swa_start: float | None = opt(None, "swa: epoch from which weights are averaged (default: 75% of "
                                           "train.epochs, as in the SWA paper).", min=0.0,
                                     max=MAX_EPOCHS)
    swa_lr: float | None = opt(None, "swa: constant learning rate from swa_start on (default: keep the "
                                        "schedule).", min=0.0, min_exclusive=True, max=MAX_FLOAT)
    seeds: int = opt(1, "Train N runs that differ only in the seed (init, data order, dropout) into one "
                        "ensemble folder (seed-0/, seed-1/, ...); they share the validation split.", min=1,
                    max=1000)


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = opt(10, "Passes over the training set (fractions allowed).", min=0.0, min_exclusive=True,
                        max=MAX_EPOCHS)
    loss: str = opt("cross_entropy", "Loss on raw outputs (logits): no activation on the output layer.",
                    choices=LOSSES)
    label_smoothing: float = opt(0.0, "cross_entropy: share of probability spread over the other classes.",
                                 min=0.0, max=0.99)
    device: str = opt("auto", "auto picks cuda when available.", choices=("auto", "cpu", "cuda"))
    monitor: str = opt("auto", "Metric that picks the best checkpoint (auto: val_acc for classification, "
                               "val_loss for regression).")
    save_top_k: int = opt(3, "Keep the best K checkpoints by the monitor, plus last.pt.", min=0, max=1000)
    patience: int | None = opt(None, "Stop early after this many evaluations without improvement.", min=1,
                               max=MAX_COUNT)
    eval_every: int = opt(1, "Evaluate on the validation split every N epochs (and at the end).", min=1,
                          max=MAX_COUNT)
    threads: int | None = opt(None, "torch CPU threads (default: torch's choice).", min=1, max=1024)
    precision: str = opt("fp32", "fp32; bf16 (autocast, CPU and CUDA); fp16 (autocast + dynamic loss scaling: "
                                 "gradients unscaled before clipping, overflowing steps skipped and counted).",
                         choices=("fp32", "bf16", "fp16"))
    on_nonfinite: str = opt("stop", "A non-finite loss or gradient: stop (diagnose, keep the last finite "
                                    "checkpoint), skip the update, or rollback to the last good checkpoint.",
                            choices=("stop", "skip", "rollback"))
    max_skips: int = opt(10, "skip: stop after this many consecutive skipped updates.", min=1, max=MAX_COUNT)
    rollback_factor: float = opt(0.5, "rollback: multiply the learning rate by this after each rollback.",
                                 min=0.0, max=1.0, min_exclusive=True)
    max_rollbacks: int = opt(3, "rollback: give up (stop) after this many rollbacks.", min=1, max=1000)
    explosion_factor: float = opt(10.0, "Warn when a gradient norm exceeds this many times the recent median.",
                                  min=1.0, max=MAX_FLOAT)
    flush_denormal: str = opt("auto", "Flush denormal floats (below 1.2e-38) to zero in CPU math: tiny decaying "
                                      "values otherwise cost 10-100x per operation. auto: on for fp32/bf16 runs on the "
                                      "CPU; set for the command and restored afterwards.",
                              choices=("auto", "on", "off"))
    sync_bn: str = opt("auto", "Several processes: SyncBatchNorm (batch statistics over the global batch; CUDA "
                               "only). auto: on for CUDA with BatchNorm; off: each process normalizes its chunk.",
                       choices=("auto", "on", "off"))
    checkpoint_every: int = opt(0, "Also write last.pt every N optimizer steps between evaluations (long epochs, "
                                   "preemption, elastic restarts); 0: only at evaluations.", min=0, max=MAX_COUNT)


@dataclass(frozen=True)
class LogConfig:
    tensorboard: bool = opt(True, "Write TensorBoard event files under `<run>/tb`.")
    every_n_steps: int = opt(50, "Scalar logging interval in optimizer steps (no per-step host sync; the "
                                 "loop keeps a buffer of this many steps).", min=1, max=MAX_COUNT)
    histograms_every: int = opt(0, "Weight and gradient histograms every N steps (0: off).", min=0,
                                max=MAX_INTERVAL)
    progress: str = opt("auto", "auto: a progress bar on a terminal, plain lines otherwise.",
                        choices=("auto", "bar", "plain", "none"))
    refresh_per_second: float = opt(4.0, "Progress redraws per second (throttled).", min=0.0,
                                    min_exclusive=True, max=1000.0)
    run_dir: str = opt("runs", "Parent folder of run directories: `<run_dir>/<name>/<timestamp>/`.")


@dataclass(frozen=True)
class Recipe:
    name: str = opt("recipe", "Run name (default: the recipe file's name); one folder name under "
                              "`log.run_dir`, so no `/`, `\\`, `.` or `..`.")
    seed: int = opt(0, "Seeds init, data split and order, dropout: same recipe + seed, same numbers on CPU.",
                    min=0, max=MAX_SEED)
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "Data source, split, batching, whitening."})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "Architecture and normalization."})
    init: InitConfig = field(default_factory=InitConfig, metadata={"doc": "Weight initialization."})
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig, metadata={"doc": "Update rule."})
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig, metadata={"doc": "Learning-rate schedule."})
    clip: ClipConfig = field(default_factory=ClipConfig, metadata={"doc": "Gradient clipping."})
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig, metadata={"doc": "Ensembles."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"doc": "The loop."})
    log: LogConfig = field(default_factory=LogConfig, metadata={"doc": "Logging and progress."})
    search: dict = opt({}, "Hyperparameter search space and stages for `nnrun search` (ignored by train).")


SECTIONS = tuple(f.name for f in dataclasses.fields(Recipe) if dataclasses.is_dataclass(f.default_factory))
