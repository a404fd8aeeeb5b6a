"""Per-step values of the loop (loss, gradient norms, clip and guard flags) kept on the device.

Writing a row per step costs no host sync; the loop reads the whole window once per log
interval (one transfer) and hands named values to the callbacks and the guard.
"""

from __future__ import annotations

import torch

COLUMNS = ("train/loss", "grad_norm", "grad_norm/clipped", "clip/clipped", "nonfinite/skipped", "fp16/overflow")
"""The per-step series, in buffer column order (also their TensorBoard names)."""


class StepSeries:
    """A ring buffer of `window` rows of :data:`COLUMNS` on `device`.

    Args:
        window: rows kept (the loop's log interval: every row is read before it is overwritten).
        device: where the rows live (the model's device).
    """

    def __init__(self, window: int, device: torch.device):
        self.window = window
        self.buffer = torch.zeros(window, len(COLUMNS), device=device)
        self._nan = torch.full((), float("nan"), device=device)
        self._zero = torch.zeros((), device=device)
        self.read_upto = 0   # steps before this one have been read

    def record(self, step: int, out) -> None:
        """Write one step's values (a :class:`nnrun.training.stepper.StepOutput`); None -> NaN or 0."""
        def value(t, missing):
            return missing if t is None else t.float()

        nonfinite = out.nonfinite
        if isinstance(nonfinite, bool):  # decided on the host (CPU)
            nonfinite = torch.as_tensor(float(nonfinite), device=self._zero.device)
        row = torch.stack([out.loss, value(out.norm_before, self._nan), value(out.norm_after, self._nan),
                           value(out.clipped, self._zero), nonfinite.float(), value(out.overflow, self._zero)])
        self.buffer[step % self.window] = row

    def read(self, upto: int) -> list[tuple[int, dict[str, float]]]:
        """(0-based step, {column: value}) of the steps recorded since the last read, up to `upto`
        (one host transfer)."""
        first = max(self.read_upto, upto - self.window)
        self.read_upto = upto
        if first >= upto:
            return []
        data = self.buffer.tolist()
        return [(st, dict(zip(COLUMNS, data[st % self.window]))) for st in range(first, upto)]

    def skip_to(self, step: int) -> None:
        """Forget what was recorded before `step` (after a rollback rewinds the loop)."""
        self.read_upto = step
