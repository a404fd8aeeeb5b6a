"""Running weight averages: EMA (Polyak averaging) and SWA, over a copy of the model.

EMA (Polyak & Juditsky 1992; timm ModelEmaV3): after every optimizer step
`w_ema <- d * w_ema + (1 - d) * w` over all floating state (parameters and BatchNorm buffers),
integer buffers copied; with warmup `d = min(decay, (1 + n) / (10 + n))` (TF's schedule) so the
average is not dominated by the random init. SWA (Izmailov et al. 2018): an equal average of the
weights taken at the end of each epoch from `swa_start` on; BatchNorm statistics of the average
are recomputed on the training data before it is evaluated or saved (torch `update_bn`), since
averaged running statistics do not belong to the averaged weights (Lightning #8811).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """An EMA or SWA copy of `model` and the number of updates it has absorbed."""

    def __init__(self, model: nn.Module, kind: str, *, decay: float = 0.999, warmup: bool = True):
        self.kind, self.decay, self.warmup = kind, decay, warmup
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0
        self.bn_fresh = False
        self._cache: tuple | None = None

    def _lists(self, model: nn.Module):
        """(averaged floats, live floats, averaged ints, live ints), built once: state_dict tensors
        share storage with the modules, and the optimizer updates them in place."""
        if self._cache is None or self._cache[0] is not model:
            ours, theirs = self.model.state_dict(), model.state_dict()
            fl = [n for n, v in theirs.items() if v.is_floating_point()]
            it = [n for n, v in theirs.items() if not v.is_floating_point()]
            self._cache = (model, [ours[n] for n in fl], [theirs[n].detach() for n in fl],
                           [ours[n] for n in it], [theirs[n] for n in it])
        return self._cache[1:]

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Absorb the current weights (after an optimizer step for EMA, an epoch for SWA)."""
        avg, cur, avg_int, cur_int = self._lists(model)
        if self.updates == 0:
            torch._foreach_copy_(avg, cur)
        elif self.kind == "ema":
            torch._foreach_lerp_(avg, cur, 1.0 - self.current_decay())
        else:  # swa: running equal average, w_avg += (w - w_avg) / (n + 1)
            torch._foreach_lerp_(avg, cur, 1.0 / (self.updates + 1))
        for a, c in zip(avg_int, cur_int):
            a.copy_(c)
        self.updates += 1
        self.bn_fresh = False

    def recompute_bn(self, batches, device: torch.device) -> bool:
        """One pass over `batches` in train mode with cumulative BN averaging; False without BN."""
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns or self.bn_fresh:
            return bool(bns)
        momenta = {m: m.momentum for m in bns}
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the pass
        self.model.train()
        with torch.no_grad():
            for x, _ in batches:
                self.model(x.to(device, non_blocking=True))
        for m in bns:
            m.momentum = momenta[m]
        self.model.eval()
        self.bn_fresh = True
        return True

    def state_dict(self) -> dict:
        """Stored as the checkpoint's `ema` entry (the ensemble command reads `state_dict`)."""
        return {"kind": self.kind, "state_dict": self.model.state_dict(), "updates": self.updates,
                "decay": self.decay, "bn_fresh": self.bn_fresh}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["state_dict"])
        self.updates, self.bn_fresh = state["updates"], state.get("bn_fresh", False)
