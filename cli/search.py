"""`nnrun search RECIPE [key=value ...]`: random / coarse-to-fine hyperparameter search."""

from __future__ import annotations

import click

from nnrun.cli.common import device_option, err_console, out_console, print_notes, recipe_argument, split_recipe_args


@click.command("search", context_settings={"ignore_unknown_options": True})
@recipe_argument("[RECIPE] [KEY=VALUE]...")
@click.option("--space", type=click.Path(dir_okay=False),
              help="YAML file with the search section (replaces the recipe's).")
@click.option("--trials", type=click.IntRange(min=1),
              help="Trials of a search without stages (default search.trials, 20; with --resume the stored budget, "
                   "which a larger N raises).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local worker processes sharing the study.")
@click.option("--study", help="Study name; processes with the same --study and --storage join it.")
@click.option("--storage", help="sqlite:///file.db (default: <out>/study.db), journal:/shared/study.log, "
                                "or a database URL (postgresql+psycopg2://...).")
@click.option("--sampler", type=click.Choice(["random", "tpe"]), help="Overrides search.sampler (default random).")
@click.option("--pruner", type=click.Choice(["median", "halving", "none"]),
              help="Overrides search.pruner (default none).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Search folder (default runs/<name>/search-<timestamp>/).")
@click.option("--resume", is_flag=True, help="Continue the search in --out (default: the newest runs/<name>/search-*).")
@device_option("Overrides train.device in every trial.")
def command(args, space, trials, workers, study, storage, sampler, pruner, out, resume, device):
    """Search hyperparameters of RECIPE with Optuna; each trial is a full training run.

    \b
    nnrun search digits-search
    nnrun search my.yaml --space space.yaml --trials 60 --workers 2 --sampler tpe --pruner median
    nnrun search my.yaml --out runs/my/search-1 --resume
    nnrun search my.yaml --study s1 --storage postgresql+psycopg2://u:p@db/optuna   (on each machine)
    """
    from pathlib import Path

    from nnrun.recipe.search import parse
    from nnrun.workflows import search as wf

    name, overrides = split_recipe_args(args, required=not resume)
    out = Path(out) if out else None
    recipe = _load(name, overrides, space, out, resume)
    spec = parse(recipe.search, recipe, trials=trials, sampler=sampler, pruner=pruner)
    if resume:  # the header shows the budget the resumed search keeps
        out = out or wf.latest_search(recipe.name, recipe.log.run_dir)
        spec = wf.with_budget(spec, wf.read_meta(out), trials, out)
    console = err_console()
    _header(console, recipe, spec, workers)
    try:
        result = wf.run(recipe, spec, out=out, storage=storage, study=study, workers=workers, resume=resume,
                        device=device, on_event=lambda line: _event(console, line), trials=trials)
    except wf.SearchInterrupted as exc:
        _interrupted(console, exc)
    _report(console, result)
    out_console().print(str(result.out))


def _interrupted(console, exc) -> None:
    """One line for a search stopped by a signal, then exit 130 (SIGINT) or 143 (SIGTERM)."""
    import sys

    from rich.markup import escape

    trials = f"{len(exc.interrupted)} running trial(s) stopped and failed as interrupted; " if exc.interrupted else ""
    console.print(f"[yellow]interrupted by {exc.name}[/]: {trials}continue with: nnrun search --out "
                  f"{escape(str(exc.out))} --resume", soft_wrap=True)
    sys.exit(exc.exit_code)


def _load(name, overrides, space, out, resume):
    """The base recipe: RECIPE (+ overrides), or the one stored in the resumed search folder;
    with --space, its search section comes from that file (validated with its line numbers)."""
    from nnrun import recipe as recipe_io
    from nnrun.workflows import search as wf

    if name:
        recipe = recipe_io.load(name, overrides)
    elif out is None:
        raise click.UsageError("--resume without RECIPE needs the search folder: give it with --out DIR")
    else:
        recipe = wf.stored_recipe(out, overrides)
    if not space:
        if not recipe.search:
            raise click.UsageError(f"{name or 'the recipe'} has no `search` section: add one or give --space FILE")
        return recipe
    text, source = recipe_io.locate(space)
    data, lines = recipe_io.parse_text(text, source)
    if "search" not in data:
        data, lines = {"search": data}, {("search",) + k: v for k, v in lines.items()}
    merged = recipe_io.to_dict(recipe)
    merged["search"] = data["search"]
    return recipe_io.validate(merged, source=source, lines=lines)


def _event(console, line: str) -> None:
    from rich.markup import escape

    style = "yellow" if " failed " in line else "dim" if " pruned " in line else ""
    console.print(f"[{style}]{escape(line)}[/]" if style else escape(line), soft_wrap=True)


def _header(console, recipe, spec, workers: int) -> None:
    from rich.markup import escape

    stages = ", ".join(f"{s.trials} trials x {s.epochs if s.epochs is not None else recipe.train.epochs:g} epochs"
                       for s in spec.stages)
    console.print(f"[bold]nnrun search[/] {escape(recipe.name)}: {len(spec.params)} parameter(s), "
                  f"{spec.sampler} sampler, pruner {spec.pruner}, {spec.mode}imize {spec.metric}; "
                  f"stages: {stages}; {workers} worker(s)")
    for p in spec.params:
        console.print(f"  {escape(p.key)}: {escape(p.describe())}")


def _report(console, result) -> None:
    from rich.markup import escape

    table = _table(result)
    if console.is_terminal:
        console.print(table)
    else:  # logs, CI: print the whole table rather than fold it into 80 columns
        from rich.console import Console

        Console(stderr=True, highlight=False, width=max(console.width, 220)).print(table)
    print_notes(console, warnings=result.warnings)
    for line in result.worker_failures:
        console.print(f"[red]{escape(line)}[/]", soft_wrap=True)
    if result.best:
        console.print(f"best: trial {result.best.number} {result.metric}={result.best.value:.4f} "
                      f"in {escape(str(result.best.run_dir))} ({result.seconds:.1f} s)", soft_wrap=True)
    console.print(f"study [bold]{escape(result.study)}[/] in {escape(result.storage)}; continue with --out "
                  f"{escape(str(result.out))} --resume; add workers with --study {escape(result.study)} "
                  f"--storage {escape(result.storage)}", soft_wrap=True)


def _table(result):
    from pathlib import Path

    from rich.markup import escape
    from rich.table import Table

    from nnrun.workflows.search import format_value

    keys = list(dict.fromkeys(k for r in result.trials for k in r.params))
    staged = len({r.stage for r in result.trials}) > 1
    table = Table(title=f"trials by {result.metric} ({'higher' if result.mode == 'max' else 'lower'} is better)")
    for col in (["stage"] if staged else []) + ["trial", "state", result.metric, "epochs", *keys, "folder"]:
        table.add_column(escape(col), overflow="fold")
    for r in result.ranked():
        value = f"{r.value:.4f}" if r.value is not None else "-"
        epochs = f"{r.epochs:g}" if r.epochs is not None else "-"
        where = escape(Path(r.run_dir).name if r.run_dir else "-") + (f" {escape(r.note)}" if r.note else "")
        cells = [str(r.stage)] if staged else []
        params = [escape(format_value(r.params.get(k, "-"))) for k in keys]
        cells += [str(r.number), r.state, value, epochs, *params, where]
        table.add_row(*cells, style="bold" if r is result.best else None)
    return table
