"""The one place that knows whether this process may write files (rank 0 under torchrun)."""

from __future__ import annotations

import os


def is_main_process() -> bool:
    """True unless torchrun (or another launcher) says this is a non-zero rank."""
    return int(os.environ.get("RANK", "0")) == 0
