"""nnrun/runtime.py: denormals flushed in every thread of torch's CPU pool for the length of a
command and restored afterwards; `train.flush_denormal` resolved by device and precision."""

from __future__ import annotations

import pytest
import torch

from nnrun import recipe as recipe_io
from nnrun.runtime import cpu_settings, denormals_flushed, set_flush_denormal, wants_flush
from nnrun.training.callbacks import Callback
from nnrun.workflows import train as train_wf

TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32


def denormal_results(threads: int = 2) -> int:
    """How many of a parallel elementwise product's results are denormal (nonzero, below `tiny`):
    1M elements, so torch splits the work over every thread of its pool."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = torch.full((1_000_000,), 1e-30) * 1e-10
        return int(((out != 0) & (out.abs() < TINY)).sum())
    finally:
        torch.set_num_threads(previous)


def test_flushing_reaches_every_pool_thread_and_is_put_back():
    assert not denormals_flushed() and denormal_results() == 1_000_000
    torch.set_flush_denormal(True)  # torch's own setter reaches the calling thread only:
    try:
        assert 0 < denormal_results() < 1_000_000  # the pool's other thread still makes denormals
    finally:
        torch.set_flush_denormal(False)
    with cpu_settings(flush_denormal=True):
        assert denormals_flushed() and denormal_results() == 0
        with cpu_settings(flush_denormal=True):  # nested: the outer setting survives the inner block
            pass
        assert denormal_results() == 0
    assert not denormals_flushed() and denormal_results() == 1_000_000
    with pytest.raises(RuntimeError), cpu_settings(threads=1, flush_denormal=True):
        raise RuntimeError("a failing command")
    assert not denormals_flushed() and denormal_results() == 1_000_000


def test_a_thread_pool_grown_later_inherits_the_flag():
    with cpu_settings(threads=1, flush_denormal=True):
        assert denormal_results(threads=2) == 0
    set_flush_denormal(False)
    assert denormal_results() == 1_000_000


@pytest.mark.parametrize("setting,device,precision,flush", [
    ("auto", "cpu", "fp32", True), ("auto", "cpu", "bf16", True), ("auto", "cpu", "fp16", False),
    ("auto", "cuda", "fp32", False), ("on", "cuda", "fp16", True), (True, "cpu", "fp16", True),
    ("off", "cpu", "fp32", False), (False, "cpu", "fp32", False),
])
def test_auto_flushes_fp32_and_bf16_work_on_the_cpu(setting, device, precision, flush):
    assert wants_flush(setting, device=device, precision=precision) is flush


def test_a_training_run_flushes_while_it_runs_and_leaves_nothing_behind(tiny_recipe, tmp_path):
    seen = []

    class Probe(Callback):
        def on_fit_start(self, trainer):
            seen.append((denormals_flushed(), denormal_results()))

    for i, setting in enumerate(("auto", "off")):
        r = recipe_io.load(tiny_recipe, [f"train.flush_denormal={setting}", "train.epochs=1",
                                         "log.tensorboard=false"])
        train_wf.run(r, run_dir=tmp_path / f"run{i}", callbacks=[Probe()], handle_signals=False)
        assert not denormals_flushed() and denormal_results() == 1_000_000
    assert seen == [(True, 0), (False, 1_000_000)]
