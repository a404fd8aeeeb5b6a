"""`nnrun lr-find` as a function: recipe -> range-test curve, suggestions and an output folder.

The output folder (default `<log.run_dir>/<name>/lr-find-<timestamp>/`) holds `lr_find.csv`
(lr, loss, smoothed), `lr_find.png` (when matplotlib is installed), `tb/` (TensorBoard scalars),
`lr_find.json` (settings, stop reason and suggestions) and `recipe.yaml` (the resolved recipe that
was tested). Only the main process writes files. The model, optimizer and RNG states of the built
components are restored by :func:`nnrun.lr_find.range_test`; nothing trained is left behind.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nnrun import recipe as recipe_io
from nnrun.build import build
from nnrun.errors import writing
from nnrun.recipe.schema import Recipe
from nnrun.runtime import is_main_process, recipe_threads, resolve_device
from nnrun.tools.lr_find import RULES, Curve, RangeTestSettings, Suggestions, range_test, suggest
from nnrun.training.loggers import write_curve
from nnrun.workflows._folders import fresh_dir

PLOT_MISSING = ("matplotlib is not installed, so no plot was written (the CSV, TensorBoard scalars "
                "and suggestions are complete); install it with: pip install 'nnrun[plot]'")


@dataclass
class LrFindResult:
    """What a range test produced."""

    recipe: Recipe
    curve: Curve
    suggestions: Suggestions
    out_dir: Path | None
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    written_recipe: Path | None = None
    seconds: float = 0.0


def new_out_dir(recipe: Recipe) -> Path:
    """`<log.run_dir>/<name>/lr-find-<timestamp>/`, never reusing an existing folder."""
    return fresh_dir(recipe.log.run_dir, recipe.name, "lr-find")


def with_lr(recipe: Recipe, suggestions: Suggestions) -> Recipe:
    """The recipe with `optimizer.lr` set to the recommendation (and cyclic/one-cycle bounds filled
    into the schedule section when it has `max_lr` / `base_lr` fields)."""
    new = dataclasses.replace(recipe, optimizer=dataclasses.replace(recipe.optimizer, lr=suggestions.lr))
    names = {f.name for f in dataclasses.fields(recipe.schedule)}
    bounds = {"max_lr": suggestions.bounds.get("cyclic_max_lr"), "base_lr": suggestions.bounds.get("cyclic_base_lr")}
    fill = {k: v for k, v in bounds.items() if k in names and v is not None}
    if fill and recipe.schedule.name in ("cyclic", "one_cycle"):
        new = dataclasses.replace(new, schedule=dataclasses.replace(recipe.schedule, **fill))
    return new


def write_recipe(recipe: Recipe, suggestions: Suggestions, path: Path) -> Path:
    """Write the recipe with the recommended rate, then load it back so it is known to validate."""
    path = Path(path)
    with writing(str(path), hint="choose a writable path"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# written by `nnrun lr-find`: optimizer.lr = {suggestions.lr:g} "
                        f"({suggestions.recommended} rule)\n" + recipe_io.dump(with_lr(recipe, suggestions)))
    recipe_io.load(path)
    return path


def _write_csv(curve: Curve, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lr", "loss", "smoothed"])
        w.writerows(zip(curve.lrs, curve.losses, curve.smoothed))


def _write_tensorboard(curve: Curve, s: Suggestions, folder: Path) -> None:
    write_curve(folder, {"lr_find/loss": curve.losses, "lr_find/smoothed": curve.smoothed, "lr_find/lr": curve.lrs,
                         "lr_find/log10_lr": [math.log10(lr) for lr in curve.lrs]},
                single={"lr_find/suggested_lr": s.lr} if s.lr is not None else None)


def _summary_json(curve: Curve, s: Suggestions) -> dict:
    return {"settings": dataclasses.asdict(curve.settings), "points": len(curve), "stop": curve.stop,
            "message": curve.message, "group_ratios": curve.group_ratios,
            "recommended": s.recommended, "lr": s.lr, "reason": s.reason, "refused": s.refused,
            "spread_decades": s.spread_decades, "min_lr": s.min_lr, "warnings": s.warnings,
            "rules": {k: {"lr": r.lr, "index": r.index, "smoothed": r.loss} for k, r in s.rules.items()},
            "bounds": s.bounds}


def plot(curve: Curve, s: Suggestions, path: Path) -> bool:
    """Loss vs lr on a log axis, raw and smoothed, every rule marked; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        ax.plot(curve.lrs, curve.losses, color="0.75", lw=0.8, label="loss")
        ax.plot(curve.lrs, curve.smoothed, color="C0", lw=1.8, label=f"smoothed (EMA {curve.settings.smooth:g})")
        for k, name in enumerate(RULES):
            rule = s.rules.get(name)
            if rule is not None:
                best = name == s.recommended
                ax.axvline(rule.lr, color=f"C{k + 1}", ls="-" if best else "--", lw=2 if best else 1,
                           label=f"{name}: {rule.lr:.2g}" + (" (recommended)" if best else ""))
        finite = [v for v in curve.losses + curve.smoothed if math.isfinite(v)]
        if finite:
            top = max(curve.smoothed[0] * 1.3, min(curve.smoothed)) if math.isfinite(curve.smoothed[0]) else max(finite)
            ax.set_ylim(min(finite) - 0.05 * abs(min(finite)), min(max(finite), top))
        ax.set_xscale("log" if curve.settings.mode == "exp" else "linear")
        ax.set_xlabel("learning rate (optimizer.lr)")
        ax.set_ylabel("training loss")
        title = f"lr-find: recommended {s.lr:g} ({s.recommended})" if s.lr else "lr-find: no suggestion"
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return True


def write_outputs(result: LrFindResult) -> None:
    """CSV, TensorBoard scalars, JSON summary, the tested recipe, and the plot (when possible)."""
    out = result.out_dir
    with writing(f"the lr-find folder {out}", hint="choose a writable folder with --out"):
        out.mkdir(parents=True, exist_ok=True)
        files = {"csv": out / "lr_find.csv", "json": out / "lr_find.json", "recipe": out / "recipe.yaml"}
        _write_csv(result.curve, files["csv"])
        files["json"].write_text(json.dumps(_summary_json(result.curve, result.suggestions), indent=1))
        files["recipe"].write_text(recipe_io.dump(result.recipe))
    if result.recipe.log.tensorboard:
        files["tb"] = out / "tb"
        _write_tensorboard(result.curve, result.suggestions, files["tb"])
    if plot(result.curve, result.suggestions, out / "lr_find.png"):
        files["plot"] = out / "lr_find.png"
    else:
        result.notes.append(PLOT_MISSING)
    result.files.update(files)


@recipe_threads
def run(recipe: Recipe, *, settings: RangeTestSettings = RangeTestSettings(), out_dir: Path | str | None = None,
        write_recipe_to: Path | str | None = None, device: str | None = None, base_dir: Path | None = None,
        on_step: Callable[[int, float, float, float], None] | None = None) -> LrFindResult:
    """Run the learning-rate range test of a recipe and write its outputs.

    Args:
        recipe: a validated recipe; the test uses its data, model, init, optimizer and loss.
        settings: ramp, smoothing and stop settings.
        out_dir: output folder; default a new `<log.run_dir>/<name>/lr-find-<timestamp>/`.
        write_recipe_to: also write the recipe with the recommended `optimizer.lr` here (skipped,
            with a note, when the curve gives no trustworthy suggestion).
        device: overrides `train.device` (auto, cpu, cuda).
        base_dir: folder that relative data paths are resolved against.
        on_step: progress hook, called as `on_step(step, lr, loss, smoothed)`.
    """
    settings.check()
    start = time.perf_counter()
    components = build(recipe, device=resolve_device(device or recipe.train.device), base_dir=base_dir)
    curve = range_test(components, settings, on_step=on_step)
    result = LrFindResult(recipe, curve, suggest(curve), Path(out_dir) if out_dir else new_out_dir(recipe))
    if is_main_process():
        write_outputs(result)
        if write_recipe_to is not None and result.suggestions.lr is None:
            result.notes.append(f"{write_recipe_to} was not written: there is no trustworthy suggestion")
        elif write_recipe_to is not None:
            result.written_recipe = write_recipe(recipe, result.suggestions, Path(write_recipe_to))
    result.seconds = time.perf_counter() - start
    return result
