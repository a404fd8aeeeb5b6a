"""`nnrun ensemble PATH...`."""

from __future__ import annotations

import click

from nnrun.cli.common import device_option, err_console, out_console


@click.command("ensemble")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(min=1), help="Keep the best K members by --by (default: all found).")
@click.option("--by", "by", metavar="METRIC", help="Stored metric that ranks members (default: the "
              "checkpoints' own monitor, e.g. val_acc).")
@click.option("--mode", type=click.Choice(["mean", "logits", "vote", "weights"]), default=None,
              help="mean: average probabilities; logits: average logits; vote: majority vote; weights: "
                   "average the weights (one model).  [default: mean; weights with --greedy]")
@click.option("--greedy", is_flag=True, help="weights: greedy soup, add members only while val improves.")
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True)
@click.option("--data", "data_path", type=click.Path(), help="Predict on this file/folder (same source kind).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write per-example predictions (CSV).")
@click.option("--export", type=click.Path(dir_okay=False), help="weights: write the averaged model as a checkpoint.")
@click.option("--all", "all_checkpoints", is_flag=True, help="Take every checkpoint of each run folder, not only "
              "its best (or its ensemble members).")
@click.option("--no-ema", is_flag=True, help="Use raw weights even where a checkpoint stores EMA weights.")
@device_option("Where the members run.", default="auto")
def command(paths, top_k, by, mode, greedy, split, data_path, out, export, all_checkpoints, no_ema, device):
    """Average the predictions (or weights) of checkpoints found under PATHS: .pt files, run
    folders, ensemble folders or folders of runs (a search study)."""
    from nnrun.workflows.ensemble import run

    result = run(paths, mode=mode or ("weights" if greedy else "mean"), top_k=top_k, by=by, split=split,
                 data_path=data_path, out=out, export=export, greedy=greedy, use_ema=not no_ema,
                 all_checkpoints=all_checkpoints, device=device)
    render(result)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def render(result) -> None:
    """Members vs ensemble to stderr; the ensemble's metrics (and written files) to stdout."""
    from rich.markup import escape
    from rich.table import Table

    err = err_console()
    soup = result.weights is not None
    table = Table(title=f"{result.mode} ensemble of {len(result.members)} on the {result.split} split "
                        f"({result.examples} examples)")
    table.add_column("member", overflow="fold")
    table.add_column("weights")
    table.add_column(f"stored {result.by}", justify="right")
    table.add_column(result.metric, justify="right")
    if soup:
        table.add_column("in soup")
    for m in result.members:
        row = [escape(m.label), m.weights, _fmt(m.stored), _fmt(m.metrics.get(result.metric))]
        table.add_row(*row, *(["yes" if m.in_soup else "no"] if soup else []))
    table.add_section()
    table.add_row(f"[bold]ensemble ({result.mode})[/]", "", "", f"[bold]{_fmt(result.metrics[result.metric])}[/]",
                  *([""] if soup else []))
    err.print(table)
    err.print(f"gain over the best member ({escape(result.best_member)}): {result.gain:+.4f}; "
              f"over the members' mean: {result.gain_over_mean:+.4f} ({result.metric}, positive = better)")
    if soup:
        _render_weights(err, result.weights)
    if result.out:
        err.print(f"predictions: {escape(str(result.out))}")
    out = out_console()
    out.print(" ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()) + f" gain={result.gain:+.4f}")
    if result.export:
        out.print(escape(str(result.export)))


def _render_weights(err, w) -> None:
    from rich.markup import escape

    if w.recomputed_bn is None:
        err.print("BatchNorm: none in the model (nothing to recompute)")
    else:
        metric = w.metric
        err.print(f"BatchNorm statistics on val: averaged {metric}={w.averaged_bn[metric]:.4f}, recomputed on "
                  f"training data {metric}={w.recomputed_bn[metric]:.4f}; kept: {w.bn}")
    for step in w.steps:
        err.print(f"greedy: + {escape(step.label)} -> {step.value:.4f} {'kept' if step.kept else 'skipped'}")
