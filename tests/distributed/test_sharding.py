"""Global batches cut across processes: every example once, weights that sum to the world size,
positions that do not depend on the process count, RNG lists across process counts (no processes)."""

from __future__ import annotations

import random

import pytest
import torch

from nnrun.data import TensorSplit, make_batches
from nnrun.data.splits import shard_split
from nnrun.distributed import World, worker_exit_code
from nnrun.training.state import restore_rngs


def _split(n: int) -> TensorSplit:
    return TensorSplit(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n) % 3)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("n, batch, drop_last", [(100, 16, False), (100, 16, True), (97, 63, False), (64, 7, False)])
def test_every_global_batch_is_covered_exactly_once_by_contiguous_chunks(world, n, batch, drop_last):
    one = make_batches(_split(n), batch_size=batch, shuffle=True, seed=4, drop_last=drop_last)
    parts = [make_batches(_split(n), batch_size=batch, shuffle=True, seed=4, drop_last=drop_last,
                          shard=(r, world)) for r in range(world)]
    assert all(len(p) == len(one) for p in parts)  # the same global batches on every process
    for epoch in (0, 3):
        for b, (x, _) in enumerate(one.epoch(epoch)):
            chunks = [list(p.epoch(epoch, start=b))[0][0] for p in parts]
            assert torch.equal(torch.cat(chunks), x)  # rank order concatenates to the global batch
            sizes = [len(c) for c in chunks]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
            assert all(p.global_size(b) == len(x) for p in parts)


@pytest.mark.parametrize("world", [2, 3])
def test_loss_weights_sum_to_the_world_size(world):
    """n_r * W / N over the processes of a step sums to W, so DDP's mean of the gradients is the mean
    over all N examples (uneven and empty chunks included: a last batch of 1 on 3 processes)."""
    for sizes in ([63], [1], [64, 63, 1]):
        total = sum(sizes)
        chunks = [[len(t) for t in torch.arange(s).tensor_split(world)] for s in sizes]
        weights = [sum(c[r] for c in chunks) * world / total for r in range(world)]
        assert sum(weights) == pytest.approx(world)


def test_the_position_is_in_global_batches_and_resumes_on_any_process_count():
    """Batch b of epoch e holds the same examples whether 1 or 3 processes cut it."""
    one = make_batches(_split(50), batch_size=8, shuffle=True, seed=1)
    three = [make_batches(_split(50), batch_size=8, shuffle=True, seed=1, shard=(r, 3)) for r in range(3)]
    resumed = [torch.cat([next(iter(p.epoch(2, start=4)))[0] for p in three])]
    assert torch.equal(resumed[0], list(one.epoch(2))[4][0])


def test_evaluation_shards_are_contiguous_and_complete():
    split = _split(11)
    parts = [shard_split(split, r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p.x for p in parts]), split.x)
    assert [p.num_examples for p in parts] == [4, 4, 3]


def test_rng_states_follow_the_rank_and_are_derived_for_new_ranks():
    from nnrun.checkpoint import capture_rng

    torch.manual_seed(11)
    random.seed(11)
    states = [capture_rng(), capture_rng()]
    torch.manual_seed(12)
    states[1] = capture_rng()
    payload = {"rng": states, "world_size": 2, "step": 5}
    assert restore_rngs(payload, World(rank=1, world_size=2), seed=0) == []
    assert torch.equal(torch.get_rng_state(), states[1]["torch"])
    notes = restore_rngs(payload, World(rank=2, world_size=3), seed=0)  # a third process: derived
    assert notes and "2 process(es)" in notes[0]
    a = torch.rand(3)
    restore_rngs(payload, World(rank=2, world_size=3), seed=0)
    assert torch.equal(a, torch.rand(3))  # derived from (seed, rank, step): the same every time
    assert restore_rngs({"rng": states[0], "step": 5}, World(), seed=0) == []  # format 1: one dict


def test_the_exit_code_is_the_first_failures_and_a_signal_gives_128_plus_it():
    class Failure:
        def __init__(self, code, timestamp):
            self.exitcode, self.timestamp = code, timestamp

    # rank 1 failed first (exit 2); torchrun then stopped rank 0 with SIGTERM
    assert worker_exit_code({1: Failure(2, 100), 0: Failure(-15, 101)}) == 2
    assert worker_exit_code({0: Failure(-15, 5)}) == 143
    # the same second (torchrun's timestamps are whole seconds), the victim handled SIGTERM (exit 143)
    # and has the lower rank: the root cause still wins
    assert worker_exit_code({0: Failure(143, 100), 1: Failure(2, 100)}) == 2
    assert worker_exit_code({0: Failure(143, 100), 1: Failure(-15, 100)}) == 143  # all stopped by SIGTERM
    assert worker_exit_code({1: Failure(130, 100), 0: Failure(130, 100)}) == 130  # Ctrl-C on the group
