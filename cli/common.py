"""What every subcommand shares: consoles, error rendering, recipe arguments."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence

import click


def err_console():
    """Progress, tables and errors go to stderr; results go to stdout."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def out_console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


DEVICES = ("auto", "cpu", "cuda")


def is_worker() -> bool:
    """Started by torchrun as one of several processes (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_rank_zero() -> bool:
    """The process that prints (and writes files): rank 0, or the only process."""
    return os.environ.get("RANK", "0") == "0"  # the choices of the recipe's train.device


def device_option(help_text: str = "Overrides train.device.", default: str | None = None):
    """The `--device` option every command that runs a model shares."""
    return click.option("--device", type=click.Choice(DEVICES), default=default, show_default=default is not None,
                        help=help_text)


def print_notes(console, *, warnings: Sequence[str] = (), notes: Sequence[str] = ()) -> None:
    """Warnings, then notes, one escaped line each, on the stderr console."""
    from rich.markup import escape

    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)
    for n in notes:
        console.print(f"[yellow]note:[/] {escape(n)}", soft_wrap=True)


def run_guarded(fn: Callable, *, debug: bool):
    """Call fn; an NnrunError (or a missing file, or a signal) ends in one message, not a traceback.

    SIGINT and SIGTERM end the command from its very start with exit code 130 or 143; a training run
    replaces that with a stop at the next step that saves first (see :mod:`nnrun.signals`)."""
    from rich.markup import escape

    from nnrun.cli.tasks import task_reporter
    from nnrun.errors import NnrunError
    from nnrun.progress import reporting
    from nnrun.signals import Stopped, abort_on_signals

    try:
        with abort_on_signals(), reporting(task_reporter(err_console(), show=is_rank_zero())):
            return fn()
    except NnrunError as exc:
        if debug:
            raise
        if is_rank_zero():  # under torchrun every process fails alike; one prints
            err_console().print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        else:
            _after_rank_zero(f"[bold red]error[/] (rank {os.environ.get('RANK')}): {escape(str(exc))}")
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, Stopped) as exc:
        if debug:
            raise
        name = exc.name if isinstance(exc, Stopped) else "SIGINT"
        if is_rank_zero():
            err_console().print(f"[yellow]aborted[/] ({name})")
        sys.exit(exc.exit_code if isinstance(exc, Stopped) else 130)


WORKER_GRACE_S = 10.0


def _after_rank_zero(message: str) -> None:
    """A process other than rank 0 that failed: give rank 0 the time to print the error and exit.

    Under torchrun every process usually fails alike and rank 0 prints. When a process exits, torchrun
    stops the others with SIGTERM at once, so a rank that exited first could cut rank 0 off before it
    printed (seen in CI: no message at all). So this rank waits up to WORKER_GRACE_S for that SIGTERM
    (its default action ends the process: the signal handlers are restored by now); when none comes,
    only this rank failed, and it prints its own message, naming its rank."""
    try:
        time.sleep(WORKER_GRACE_S)
    except KeyboardInterrupt:
        sys.exit(130)
    err_console().print(message, soft_wrap=True)


def recipe_argument(metavar: str = "RECIPE [KEY=VALUE]..."):
    """The `RECIPE [KEY=VALUE]...` argument of the commands that load a recipe, with shell completion
    of recipe names, files, keys and values (:mod:`nnrun.cli.completion`)."""
    from nnrun.cli.completion import complete_recipe_args

    return click.argument("args", nargs=-1, metavar=metavar, shell_complete=complete_recipe_args)


def split_recipe_args(args: Sequence[str], *, required: bool = True) -> tuple[str | None, list[str]]:
    """`RECIPE key=value ...` -> (recipe, overrides); the recipe is the first arg without '='."""
    recipe, overrides = None, []
    for arg in args:
        if "=" in arg or recipe is not None:
            overrides.append(arg)
        else:
            recipe = arg
    if recipe is None and required:
        raise click.UsageError("missing RECIPE (a .yaml file or a shipped recipe name; see `nnrun recipes`)")
    return recipe, overrides
