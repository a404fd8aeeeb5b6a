"""`schedule` section -> learning-rate (and momentum) schedule, a pure function of the step.

The caller owns the step counter (no hidden `last_epoch`, timm style): the loop asks for the
factor at optimizer step t and writes `base_lr * factor` into every parameter group, so groups
keep their ratios under every schedule and a resumed run is exactly where it left off once the
step is restored. The only state is the plateau modifier's (best value, counters, scale), which
is saved in checkpoints.

Formulas and sources (see `algorithms.md` section 2): step/exponential/1-t decay (CS231n);
cosine and SGDR (Loshchilov & Hutter 2017; timm `cosine_lr.py` for cycle_mult/decay); cyclical
rates (Smith 2015/2017, PyTorch `CyclicLR`); one-cycle (Smith 2018, matching PyTorch
`OneCycleLR` step for step); ReduceLROnPlateau semantics as PyTorch's; linear warmup (Goyal et
al. 2017) with the schedule's clock starting after it; a final linear decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nnrun.recipe.checks import MAX_SNAPSHOTS, sgdr_cycle_end, sgdr_cycles_within
from nnrun.recipe.schema import MomentumScheduleConfig, PlateauConfig, ScheduleConfig

DEFAULT_GAMMA = {"step": 0.1, "multistep": 0.1, "exp_range": 0.99994}


def anneal(start: float, end: float, pct: float, how: str = "cos") -> float:
    """Cosine (or linear) interpolation from start (pct=0) to end (pct=1)."""
    if how == "linear":
        return start + (end - start) * pct
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * pct))


def sgdr_cycle(t: float, cycle_len: float, mult: float) -> tuple[int, float, float]:
    """(cycle index, time into the cycle, cycle length) at time t (timm's closed form)."""
    if mult == 1.0:
        i = int(t // cycle_len)
        return i, t - i * cycle_len, cycle_len
    i = int(math.floor(math.log(1 - t / cycle_len * (1 - mult), mult)))
    length = cycle_len * mult ** i
    return i, t - cycle_len * (1 - mult ** i) / (1 - mult), length


def one_cycle(cfg: ScheduleConfig, step: int, total: int, max_lr: float) -> tuple[float, float]:
    """(lr, momentum) of PyTorch's two-phase OneCycleLR at `step` of `total` steps."""
    initial = max_lr / cfg.div_factor
    phases = [(float(cfg.pct_start * total) - 1, initial, max_lr, cfg.max_momentum, cfg.base_momentum),
              (float(total) - 1, max_lr, initial / cfg.final_div_factor, cfg.base_momentum, cfg.max_momentum)]
    start_step = 0.0
    for i, (end_step, lr0, lr1, m0, m1) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            pct = (step - start_step) / max(end_step - start_step, 1e-12)
            return anneal(lr0, lr1, pct, cfg.anneal), anneal(m0, m1, pct, cfg.anneal)
        start_step = end_step
    raise AssertionError("unreachable")


def cyclic(cfg: ScheduleConfig, t: float, step: int, lr: float) -> float:
    """Smith's triangular / triangular2 / exp_range rate at time t (half cycle = step_size)."""
    max_lr = cfg.max_lr or lr
    base = cfg.base_lr if cfg.base_lr is not None else max_lr / 4
    cycle = math.floor(1 + t / (2 * cfg.step_size))
    x = abs(t / cfg.step_size - 2 * cycle + 1)
    scale = {"triangular": 1.0, "triangular2": 0.5 ** (cycle - 1),  # a float power: no huge integer
             "exp_range": (cfg.gamma or DEFAULT_GAMMA["exp_range"]) ** step}[cfg.mode]
    return base + (max_lr - base) * max(0.0, 1.0 - x) * scale


def main_rate(cfg: ScheduleConfig, t: float, horizon: float, step: int, steps: int, lr: float) -> float:
    """The schedule's rate for the base group at time t (in `unit`) after warmup.

    Args:
        t, horizon: time since warmup and the schedule's whole span, in `cfg.unit`.
        step, steps: the same in optimizer steps (one-cycle and exp_range count steps).
        lr: optimizer.lr, the base rate.
    """
    name, gamma = cfg.name, cfg.gamma or DEFAULT_GAMMA.get(cfg.name, 0.1)
    if name in ("constant", "plateau"):
        return lr
    if name == "step":
        return lr * gamma ** math.floor(t / cfg.step_size + 1e-9)
    if name == "multistep":
        return lr * gamma ** sum(1 for m in cfg.milestones if t + 1e-9 >= m)
    if name == "exponential":
        return lr * math.exp(-cfg.k * t)
    if name == "inverse_time":
        return lr / (1.0 + cfg.k * t)
    if name == "cosine":
        return anneal(lr, cfg.min_lr, min(t / horizon, 1.0) if horizon > 0 else 1.0)
    if name == "sgdr":
        i, t_cur, length = sgdr_cycle(t, cfg.cycle_len, cfg.cycle_mult)
        peak = lr * cfg.cycle_decay ** i
        return anneal(peak, cfg.min_lr, t_cur / length)
    if name == "cyclic":
        return cyclic(cfg, t, step, lr)
    if name == "one_cycle":
        return one_cycle(cfg, step, steps, cfg.max_lr or lr)[0]
    raise ValueError(f"unknown schedule {name!r}")  # unreachable: validated


@dataclass
class Plateau:
    """ReduceLROnPlateau as a modifier: a scale on top of any schedule (PyTorch's semantics)."""

    cfg: PlateauConfig
    mode: str
    lr: float
    best: float | None = None
    bad: int = 0
    cooldown: int = 0
    scale: float = 1.0
    cuts: int = 0

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        thr, best = self.cfg.threshold, self.best
        if self.cfg.threshold_mode == "rel":
            return value < best * (1 - thr) if self.mode == "min" else value > best * (1 + thr)
        return value < best - thr if self.mode == "min" else value > best + thr

    def observe(self, value: float | None) -> bool:
        """Feed one evaluation's metric; True when the rate was cut."""
        if value is None or value != value:
            return False
        if self._better(value):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.cooldown > 0:
            self.cooldown -= 1
            self.bad = 0
        if self.bad > self.cfg.patience:
            floor = self.cfg.min_lr / self.lr
            new = max(self.scale * self.cfg.factor, floor)
            self.cooldown, self.bad = self.cfg.cooldown, 0
            if self.scale - new > 1e-12:
                self.scale, self.cuts = new, self.cuts + 1
                return True
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad, "cooldown": self.cooldown, "scale": self.scale,
                "cuts": self.cuts}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class Schedule:
    """Learning-rate factor and momentum for every optimizer step of a run.

    Args:
        cfg: the recipe's schedule section.
        steps_per_epoch: optimizer steps in one epoch, to convert epochs to steps.
        total_steps: optimizer steps in the whole run.
        lr: optimizer.lr; schedule values given as rates (min_lr, max_lr, ...) refer to it and
            every other group keeps its ratio to it.
        monitor_mode: direction of train.monitor, for the plateau modifier.
        momentum: optimizer.momentum_schedule, if any.
    """

    cfg: ScheduleConfig
    steps_per_epoch: int
    total_steps: int
    lr: float = 1.0
    monitor_mode: str = "max"
    momentum: MomentumScheduleConfig | None = None
    plateau: Plateau | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        per_unit = self.steps_per_epoch if self.cfg.unit == "epochs" else 1
        self.per_unit = per_unit
        self.warmup_steps = int(round(self.cfg.warmup * per_unit))
        self.decay_steps = int(round(self.cfg.final_decay * self.total_steps))
        plateau_cfg = self.cfg.on_plateau or (PlateauConfig() if self.cfg.name == "plateau" else None)
        if plateau_cfg is not None:
            self.plateau = Plateau(plateau_cfg, self.monitor_mode, self.lr)

    @property
    def is_constant(self) -> bool:
        """The rate changes only through the plateau scale and the momentum never: the loop then
        rewrites the groups only when the scale moves."""
        c = self.cfg
        return (c.name in ("constant", "plateau") and self.warmup_steps == 0 and self.decay_steps == 0
                and self.momentum is None)

    def _rate(self, step: int) -> float:
        """The base group's rate before the final decay and the plateau scale."""
        w = self.warmup_steps
        main_steps = max(self.total_steps - w, 1)
        s = max(step - w, 0)
        rate = main_rate(self.cfg, s / self.per_unit, main_steps / self.per_unit, s, main_steps, self.lr)
        if step < w:
            rate *= self.cfg.warmup_start + (1 - self.cfg.warmup_start) * step / w
        return rate

    def rate(self, step: int) -> float:
        """The base group's learning rate at optimizer step `step` (0-based)."""
        start = self.total_steps - self.decay_steps
        if self.decay_steps and step >= start:
            v0 = self._rate(start)
            rate = v0 + (self.cfg.final_lr - v0) * (step - start) / self.decay_steps
        else:
            rate = self._rate(step)
        return rate * (self.plateau.scale if self.plateau else 1.0)

    def factor(self, step: int) -> float:
        """Multiplier of every group's base rate at `step`."""
        return self.rate(step) / self.lr

    def momentum_at(self, step: int) -> float | None:
        """Momentum (SGD/RMSprop) or beta1 (Adam) at `step`, or None to leave it alone."""
        if self.momentum is not None:
            m = self.momentum
            return m.start + (m.end - m.start) * min(1.0, step / self.steps_per_epoch / m.epochs)
        if self.cfg.name == "one_cycle" and self.cfg.cycle_momentum:
            w = self.warmup_steps
            return one_cycle(self.cfg, max(step - w, 0), max(self.total_steps - w, 1), self.cfg.max_lr or self.lr)[1]
        return None

    def cycle_end_steps(self, limit: int = MAX_SNAPSHOTS) -> list[int]:
        """Optimizer steps (counts) at which an SGDR or cyclic cycle ends: snapshot-ensemble members.

        The cycles are counted in closed form and at most `limit` are listed (validation refuses a
        snapshot ensemble with more), so the list never grows with a tiny cycle length."""
        w, main = self.warmup_steps, self.total_steps - self.warmup_steps
        horizon = main / self.per_unit
        cfg = self.cfg
        if cfg.name == "sgdr":
            count = sgdr_cycles_within(cfg.cycle_len, cfg.cycle_mult, horizon)
            ends = (sgdr_cycle_end(k, cfg.cycle_len, cfg.cycle_mult) for k in range(1, min(count, limit) + 1))
        elif cfg.name == "cyclic":
            period = 2 * cfg.step_size
            ends = (period * k for k in range(1, min(int(horizon / period + 1e-9), limit) + 1))
        else:
            return []
        return [w + int(round(e * self.per_unit)) for e in ends if round(e * self.per_unit) <= main]

    def observe(self, value: float | None) -> bool:
        """Feed the monitored metric after an evaluation; True when the plateau modifier cut the rate."""
        return self.plateau.observe(value) if self.plateau else False

    def state_dict(self) -> dict:
        return {"name": self.cfg.name, "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict) -> None:
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])


def build_schedule(cfg: ScheduleConfig, *, steps_per_epoch: int, total_steps: int, lr: float = 1.0,
                   monitor_mode: str = "max", momentum: MomentumScheduleConfig | None = None) -> Schedule:
    """Build the schedule of the recipe for a run of `total_steps` optimizer steps."""
    return Schedule(cfg, steps_per_epoch, total_steps, lr, monitor_mode, momentum)


