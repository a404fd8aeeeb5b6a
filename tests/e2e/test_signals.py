"""SIGTERM and SIGINT end `nnrun train` with 143 and 130, whenever they arrive (probe D15)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnrun import checkpoint

CMD = [sys.executable, "-c", "from nnrun.cli import main; main()", "train"]


def start(args, tmp_path: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([*CMD, *map(str, args)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # polling for an observable state, not timing anything


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_start_up_ends_with_one_message(tmp_path, tiny_recipe, signum, code):
    flag = tmp_path / "flag"
    proc = start([tiny_recipe, "--run-dir", tmp_path / "r"], tmp_path, NNRUN_CRASH_AT="start",
                 NNRUN_CRASH_FLAG=str(flag))
    wait_for(flag.exists, proc, "start-up")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"aborted ({signal.Signals(signum).name})" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(3))
@pytest.mark.parametrize("signals_sent", [[signal.SIGTERM], [signal.SIGTERM, signal.SIGTERM],
                                          [signal.SIGINT, signal.SIGINT]])
def test_signals_while_training_keep_the_first_signals_code(tmp_path, tiny_recipe, signals_sent, repeat):
    run_dir = tmp_path / "r"
    proc = start([tiny_recipe, "train.epochs=200", "--run-dir", run_dir], tmp_path)
    metrics = run_dir / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 1, proc, "the first evaluation")
    for s in signals_sent:
        proc.send_signal(s)
    _, err = proc.communicate(timeout=60)
    expected = 128 + int(signals_sent[0])
    assert proc.returncode == expected, err
    assert "Traceback" not in err
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] > 0
    if len(signals_sent) == 1:  # a single signal stops at a step boundary and saves that step
        assert "resume exactly with" in err
        assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["batch"] >= 0


def test_the_second_signal_aborts_with_the_first_signals_code():
    """The interleaving forced in-process: SIGTERM asks for a stop, then SIGINT (or SIGTERM again)
    aborts with 143, not 130."""
    from nnrun.signals import Stopped, abort_on_signals, stop_on_signals

    asked = []
    with pytest.raises(Stopped) as info, stop_on_signals(asked.append) as caught:
        os.kill(os.getpid(), signal.SIGTERM)
        assert asked == ["SIGTERM"] and caught["signal"] == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)
    assert info.value.exit_code == 143 and info.value.name == "SIGTERM"
    with pytest.raises(Stopped) as info, abort_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored afterwards
