"""`nnrun data get NAME... [--to DIR]` and `nnrun data list`."""

from __future__ import annotations

import click

from nnrun.cli.common import err_console, out_console

ACTIONS = ("get", "list")


@click.command("data")
@click.argument("action", type=click.Choice(ACTIONS), metavar="{get|list}")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--to", "to", type=click.Path(file_okay=False),
              help="get: put the files in this folder (then set data.path to it) instead of the cache.")
def command(action, names, to):
    """Download public datasets (mnist, fashion-mnist, cifar10), SHA-256 verified, or list them.

    \b
    nnrun data get mnist                 into the cache ($NNRUN_DATA, else ~/.cache/nnrun)
    nnrun data get cifar10 --to data/cifar10
    nnrun data list                      the sets, their sizes and whether they are cached
    """
    if action == "list":
        if names or to:
            raise click.UsageError("`nnrun data list` takes no NAME and no --to")
        _list()
        return
    if not names:
        raise click.UsageError("missing NAME: nnrun data get mnist|fashion-mnist|cifar10 [--to DIR]")
    for name in dict.fromkeys(names):
        _get(name, to)


def _get(name: str, to: str | None) -> None:
    from pathlib import Path

    from rich.markup import escape

    from nnrun.data.datasets import human_size
    from nnrun.data.download import cache_root, ensure, is_ready, lookup, mirror_list

    public = lookup(name)
    folder = Path(to).expanduser() if to else cache_root() / public.name
    console = err_console()
    if not is_ready(public, folder):
        mirrors = mirror_list(public)
        more = f" (then {len(mirrors) - 1} other mirror(s))" if len(mirrors) > 1 else ""
        console.print(f"[bold]nnrun data get[/] {public.title}: {len(public.files)} file(s), "
                      f"{human_size(public.size)} at most, from {escape(mirrors[0])}{escape(more)} "
                      f"into {escape(str(folder))}", soft_wrap=True)
    fetched = ensure(public.name, folder)
    if fetched.downloaded:
        console.print(f"{public.title}: downloaded {len(fetched.downloaded)} file(s), "
                      f"{human_size(fetched.bytes)}, SHA-256 verified", soft_wrap=True)
    else:
        console.print(f"{public.title}: already in {escape(str(folder))} (nothing downloaded)", soft_wrap=True)
    out_console().print(escape(str(folder)))


def _list() -> None:
    from rich.markup import escape
    from rich.table import Table

    from nnrun.data.datasets import DATASETS, human_size
    from nnrun.data.download import cache_root, is_ready

    root = cache_root()
    table = Table("name", "dataset", "files", "download", "in the cache", title=f"cache: {escape(str(root))}")
    for public in DATASETS.values():
        cached = is_ready(public, root / public.name)
        table.add_row(public.name, public.title, str(len(public.files)), human_size(public.size),
                      escape(str(root / public.name)) if cached else "-")
    out_console().print(table)
