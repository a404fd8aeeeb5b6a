"""`nnrun predict CKPT`."""

from __future__ import annotations

import click

from nnrun.cli.common import device_option, err_console, out_console


@click.command("predict")
@click.argument("checkpoint", type=click.Path())
@click.option("--data", "data_path", type=click.Path(), help="Predict on this file/folder (same source kind) "
              "instead of the checkpoint's data.path.")
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Write per-example predictions (CSV).")
@device_option("Where the model runs.", default="auto")
def command(checkpoint, data_path, split, out, device):
    """Predict with CHECKPOINT (a .pt file or a run folder) and print metrics when labels exist."""
    from rich.markup import escape
    from rich.table import Table

    from nnrun.workflows.predict import run

    result = run(checkpoint, split=split, data_path=data_path, device=device, out=out)
    table = Table("metric", "value", title=f"{split} split, {result.examples} examples")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    err_console().print(table)
    if result.out:
        err_console().print(f"predictions: {escape(str(result.out))}")
    out_console().print(" ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()))
