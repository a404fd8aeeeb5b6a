"""Progress of long work (nnrun.progress): the CLI's reporter (cli/tasks.py) stays quiet for short work and
reports long work with a bar or plain lines, driven here by a fake clock; predict, ensemble and search report
their batches, members and trials to a reporter installed with nnrun.progress.reporting."""

from __future__ import annotations

import io
import textwrap

import pytest
from rich.console import Console

from nnrun import progress
from nnrun import recipe as recipe_io
from nnrun.cli.tasks import TaskReporter
from nnrun.recipe.search import parse
from nnrun.workflows import ensemble as ens_wf
from nnrun.workflows import predict as predict_wf
from nnrun.workflows import search as search_wf


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reporter(*, terminal: bool):
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=100, color_system=None)
    clock = Clock()
    return TaskReporter(console, terminal=terminal, clock=clock), clock, out


# ---------------------------------------------------------------------------------------------
# the reporter


def test_short_work_prints_nothing_on_either_display():
    for terminal in (False, True):
        rep, clock, out = reporter(terminal=terminal)
        with progress.reporting(rep), progress.task("predicting 360 examples", 6) as bar:
            for _ in range(6):
                clock.now += 0.05
                bar.advance(1)
        assert out.getvalue() == "", terminal
        assert rep.open == [] and rep.progress is None


def test_plain_lines_after_two_seconds_then_every_ten_and_a_last_line():
    rep, clock, out = reporter(terminal=False)
    with progress.reporting(rep), progress.task("decoding 40 examples", 40) as bar:
        for _ in range(40):  # one unit a second
            clock.now += 1.0
            bar.advance(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("decoding 40 examples: 2/40 (5%) after 2 s, about 38 s left"), lines
    assert [line.split(":")[1].split()[0] for line in lines[1:-1]] == ["12/40", "22/40", "32/40"]
    assert lines[-1] == "decoding 40 examples: done, 40 in 40 s"


def test_plain_last_line_says_where_interrupted_work_stopped():
    rep, clock, out = reporter(terminal=False)
    with pytest.raises(KeyboardInterrupt), progress.reporting(rep), progress.task("search: 5 trials", 5) as bar:
        clock.now += 3.0
        bar.advance(2)
        raise KeyboardInterrupt
    assert out.getvalue().splitlines()[-1] == "search: 5 trials: stopped at 2/5 after 3 s"


def test_bar_appears_after_half_a_second_shares_one_display_for_nested_tasks_and_goes_away():
    rep, clock, out = reporter(terminal=True)
    with progress.reporting(rep), progress.task("search: 4 trials", 4, done=1) as outer:
        clock.now += 0.3
        outer.advance(0)
        assert rep.progress is None  # not yet: short work shows nothing
        with progress.task("trial 1: optimizer steps", 10) as inner:
            clock.now += 0.3
            inner.advance(1)
            shown = rep.progress
            assert shown is not None and len(shown.tasks) == 1  # only the outer task is 0.5 s old
            assert shown.tasks[0].completed == 1 and shown.tasks[0].total == 4
            clock.now += 0.6
            inner.advance(9)
            assert rep.progress is shown and [t.completed for t in shown.tasks] == [1, 10]  # one live display
        assert len(shown.tasks) == 1
        outer.advance(1)
    assert rep.progress is None and rep.open == []
    assert "search: 4 trials" in out.getvalue()


def test_not_shown_processes_get_silent_handles():
    from nnrun.cli.tasks import task_reporter

    out = io.StringIO()
    rep = task_reporter(Console(file=out), show=False)
    with progress.reporting(rep), progress.task("x", 3, done=1) as bar:
        bar.advance(2)
    assert out.getvalue() == ""


# ---------------------------------------------------------------------------------------------
# what the library reports


class Recorder:
    """A reporter that records every task: [description, total, done, closed]."""

    def __init__(self):
        self.tasks: list[list] = []
        self.starts: list[int] = []  # each task's `done` when it opened

    def __call__(self, description, total, done=0):
        entry = [description, total, done, False]
        self.starts.append(done)
        self.tasks.append(entry)

        class Handle:
            def advance(self, n=1):
                entry[2] += n

            def close(self):
                entry[3] = True

        return Handle()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from nnrun.workflows import train as train_wf

    root = tmp_path_factory.mktemp("progress-runs")
    text = textwrap.dedent("""\
        seed: {seed}
        data: {{source: digits, val_fraction: 0.2, eval_batch_size: 100, split_seed: 0}}
        model: {{hidden: [16]}}
        train: {{epochs: 1, threads: 1}}
        log: {{progress: none, tensorboard: false}}
        """)
    results = []
    for seed in (0, 1):
        path = root / f"r{seed}.yaml"
        path.write_text(text.format(seed=seed))
        results.append(train_wf.run(recipe_io.load(path), run_dir=root / f"r{seed}", handle_signals=False))
    return results


def test_predict_reports_one_step_per_batch(two_runs):
    rec = Recorder()
    with progress.reporting(rec):
        result = predict_wf.run(two_runs[0].best_checkpoint, device="cpu")
    assert result.examples == 288
    assert rec.tasks == [["predicting 288 val examples", 3, 3, True]]  # 288 examples in batches of 100


def test_ensemble_reports_members_and_each_members_batches(two_runs):
    rec = Recorder()
    with progress.reporting(rec):
        ens_wf.run([r.best_checkpoint for r in two_runs], device="cpu")
    outer = [t for t in rec.tasks if t[0].startswith("ensemble:")]
    inner = [t for t in rec.tasks if t[0].startswith("member ")]
    assert outer == [["ensemble: predicting with 2 members", 2, 2, True]]
    assert len(inner) == 2 and all(t[1] == t[2] == 3 and t[3] for t in inner)


def test_search_reports_trials_done_of_the_budget_and_each_trials_steps(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""\
        seed: 5
        data: {source: digits, limit: 200, val_fraction: 0.25, batch_size: 50}
        model: {hidden: [16]}
        train: {epochs: 1, save_top_k: 1, threads: 1}
        log: {progress: none, tensorboard: false}
        search:
          trials: 2
          space: {optimizer.lr: {log_uniform: [1e-3, 1e-2]}}
        """))
    recipe = recipe_io.load(path)
    rec = Recorder()
    with progress.reporting(rec):
        result = search_wf.run(recipe, parse(recipe.search, recipe), out=tmp_path / "search")
    assert len(result.trials) == 2
    assert rec.tasks[0] == ["search: 2 trials", 2, 2, True]
    trials = rec.tasks[1:]
    assert [t[0] for t in trials] == ["trial 0: optimizer steps", "trial 1: optimizer steps"]
    assert all(t[1] == t[2] == 3 and t[3] for t in trials)  # 150 training examples in batches of 50
    # resumed with a larger budget, the task starts at the two trials already done
    rec = Recorder()
    with progress.reporting(rec):
        search_wf.run(recipe, parse(recipe.search, recipe, trials=3), out=tmp_path / "search", resume=True,
                      trials=3)
    assert rec.tasks[0] == ["search: 3 trials", 3, 3, True] and rec.starts[0] == 2
    assert len(rec.tasks) == 2  # the search and its one new trial
