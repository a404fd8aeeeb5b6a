"""The `nnrun` command line (installed as `nnrun.cli`).

One click module per subcommand, imported only when that command runs (click's "lazily loading
subcommands" pattern), so `nnrun --help` and `nnrun --version` never import torch.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from nnrun._version import __version__

COMMANDS = {
    "train": ("train", "Train a recipe: checkpoints, TensorBoard, exact resume."),
    "check": ("check", "Validate a recipe and print it with every default filled in."),
    "recipes": ("recipes", "List, print or copy (--copy) the recipes that ship with nnrun."),
    "predict": ("predict", "Write predictions of a checkpoint and print its metrics."),
    "lr-find": ("lr_find", "Learning-rate range test with a suggestion and a plot."),
    "overfit-one-batch": ("overfit", "Debugging checklist: can the model memorize one batch?"),
    "ensemble": ("ensemble", "Average checkpoints' predictions (or weights)."),
    "search": ("search", "Random / coarse-to-fine hyperparameter search with Optuna."),
    "schedule": ("schedule", "Draw a recipe's learning-rate and momentum schedule without training."),
    "report": ("report", "Compare runs: table, curves, PNG and HTML report."),
    "data": ("data", "Download the public datasets (MNIST, Fashion-MNIST, CIFAR-10) into the cache."),
}


def available() -> dict[str, tuple[str, str]]:
    """The commands whose module is present (found without importing it)."""
    from importlib.util import find_spec

    return {name: entry for name, entry in COMMANDS.items() if find_spec(f"{__name__}.{entry[0]}") is not None}


class LazyGroup(click.Group):
    """A group whose subcommands live in their own modules and load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(available())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in available():
            return None
        module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The short help comes from COMMANDS so listing commands imports nothing.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in available().items()])

    def resolve_command(self, ctx: click.Context, args: list[str]):
        """Only `train` runs in several processes (under torchrun); the others refuse a world size above 1."""
        from nnrun.cli.common import is_worker
        from nnrun.errors import NnrunError

        name, cmd, rest = super().resolve_command(ctx, args)
        if is_worker() and name != "train":
            raise NnrunError(f"nnrun {name} runs in one process, but torchrun started {os.environ['WORLD_SIZE']}",
                             hint=f"run `nnrun {name} ...` without torchrun (search scales out with --workers "
                                  "or more processes on one --storage)")
        return name, cmd, rest

    def invoke(self, ctx: click.Context):
        """Run the subcommand; user mistakes become one clear message and exit code 2."""
        from nnrun.cli.common import run_guarded

        return run_guarded(lambda: super(LazyGroup, self).invoke(ctx), debug=ctx.params.get("debug", False))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="nnrun")
@click.option("--debug", is_flag=True, help="Show the full traceback of errors.")
def main(debug: bool) -> None:
    """nnrun: train PyTorch models from YAML recipes that encode the field's best practices.

    \b
    Quickstart:  nnrun train quickstart
    Validate:    nnrun check quickstart optimizer.lr=3e-4
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
