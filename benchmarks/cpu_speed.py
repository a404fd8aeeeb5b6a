"""Where CPU time is lost, side by side in one run: denormals, image folders, the CNN loop, bf16, compile.

Every case times two or more configurations alternately, round after round, and prints the median
of the per-round ratios (the VM's speed drifts between rounds; adjacent runs share its state):

  denormal      MNIST MLP 784-512-256-10 without normalization layers, Adam 1e-3, batch 128:
                `data.normalize: none` (flush_denormal auto, and off) against `standardize`.
                Target: none within 1.1x of standardize.
  image-folder  20,000 MNIST PNGs (written once from the IDX files) against the same images from
                the IDX files, time per epoch after the first; `data.cache: auto` and `none`.
                Target: the cached folder within 1.3x of IDX.
  cnn           `mnist-cnn` through nnrun against a hand-written loop of the same CNN (index
                batching, fused Adam, the same whitened tensors). Target: at most 1.0x.
  precision     bf16 autocast and torch.compile against fp32 eager for the MLP, the CNN and a
                ResNet-20 (on MNIST; no CIFAR-10 here), hand-written loops: time per epoch after
                the first, compile time, accuracy after the budget.

    python benchmarks/cpu_speed.py ../shared/data/mnist [--cases denormal,image-folder,cnn,precision]
        [--rounds 3] [--limit 20000]
"""

from __future__ import annotations

import argparse
import gzip
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch._dynamo
from torch import nn

BATCH = 128


# --------------------------------------------------------------------------------------------
# helpers


def epoch_timer():
    """A callback that records the wall time at the start of fit and at each evaluation."""
    from nnrun.training.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self):
            self.marks: list[float] = []

        def on_fit_start(self, trainer) -> None:
            self.marks = [time.perf_counter()]

        def on_eval_end(self, trainer, record) -> None:
            self.marks.append(time.perf_counter())

        def epochs(self) -> list[float]:
            return [b - a for a, b in zip(self.marks, self.marks[1:])]

    return EpochTimer()


def train_nnrun(recipe_name: str, overrides: list[str], out: Path) -> tuple[float, list[float], float]:
    """(fit seconds, seconds of each epoch, best monitored value) of one nnrun run."""
    from nnrun import recipe as recipe_io
    from nnrun.workflows.train import run

    recipe = recipe_io.load(recipe_name, overrides)
    timer = epoch_timer()
    result = run(recipe, run_dir=out, callbacks=[timer], handle_signals=False)
    return result.seconds, timer.epochs(), float(result.best["value"])


def paired(times: dict[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of times[a][r] / times[b][r]."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def show(times: dict[str, list[float]], unit: str = "s") -> None:
    for k, v in times.items():
        print(f"    {k:28s} " + "  ".join(f"{t:7.3f}{unit}" for t in v) + f"   median {statistics.median(v):.3f}{unit}")


def print_ratios(case: str, result: dict[str, float], *, headline: str, target: float) -> None:
    """Each ratio of a case, then whether the headline one meets its target."""
    for k, v in result.items():
        print(f"  [{case}] {k}: {v:.3f}x")
    print(f"  target: {headline} <= {target}x -> {'met' if result[headline] <= target else 'MISSED'}")


def read_idx(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    def raw(name: str) -> bytes:
        path = folder / name
        if path.exists():
            return path.read_bytes()
        return gzip.open(folder / f"{name}.gz").read()

    x = np.frombuffer(raw(images), np.uint8, offset=16).reshape(-1, 28, 28)
    y = np.frombuffer(raw(labels), np.uint8, offset=8)
    return x, y


# --------------------------------------------------------------------------------------------
# cases


def case_denormal(mnist: Path, rounds: int, epochs: int, tmp: Path) -> dict:
    common = [f"data.path={mnist}", f"train.epochs={epochs}", "model.hidden=[512,256]", "model.norm=none",
              "model.dropout=0", "optimizer.lr=1e-3", f"data.batch_size={BATCH}", "log.tensorboard=false",
              "train.save_top_k=0"]
    configs = {"standardize": ["data.normalize=standardize"],
               "none (flush auto)": ["data.normalize=none"],
               "none (flush off)": ["data.normalize=none", "train.flush_denormal=off"]}
    times: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(rounds):
        for c, (name, extra) in enumerate(configs.items()):
            fit, _, best = train_nnrun("mnist-mlp", common + extra, tmp / f"denormal-{r}-{c}")
            times[name].append(fit)
            print(f"  round {r + 1} {name:20s} {fit:6.2f} s  val_acc {best:.4f}")
    show(times)
    result = {"none/standardize": paired(times, "none (flush auto)", "standardize"),
              "none without flushing/standardize": paired(times, "none (flush off)", "standardize"),
              "flush off/flush auto (none)": paired(times, "none (flush off)", "none (flush auto)")}
    print_ratios("denormal", result, headline="none/standardize", target=1.1)
    return result


def write_png_folder(mnist: Path, folder: Path, limit: int) -> None:
    """The first ``limit`` MNIST training images as train/<label>/<index>.png (once)."""
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return
    x, y = read_idx(mnist, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    for i in range(limit):
        target = folder / "train" / str(int(y[i]))
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(target / f"{i:05d}.png")
    done.write_text("ok")


def case_image_folder(mnist: Path, rounds: int, epochs: int, tmp: Path, limit: int, pngs: Path | None) -> dict:
    folder = pngs or (tmp / "pngs")
    t0 = time.perf_counter()
    write_png_folder(mnist, folder, limit)
    print(f"  {limit:,} PNGs in {folder} ({time.perf_counter() - t0:.1f} s to write or find)")
    common = [f"train.epochs={epochs}", "model.dropout=0", "log.tensorboard=false", "train.save_top_k=0"]
    configs = {"idx": [f"data.path={mnist}", f"data.limit={limit}"],
               "png cache auto": ["data.source=image-folder", f"data.path={folder}", "data.cache=auto"],
               "png cache none": ["data.source=image-folder", f"data.path={folder}", "data.cache=none"]}
    later: dict[str, list[float]] = {k: [] for k in configs}
    first: dict[str, list[float]] = {k: [] for k in configs}
    setup: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(rounds):
        for name, extra in configs.items():
            t0 = time.perf_counter()
            out = tmp / f"img-{r}-{name.replace(' ', '')}"
            fit, per_epoch, best = train_nnrun("mnist-mlp", common + extra, out)
            setup[name].append(time.perf_counter() - t0 - fit)
            first[name].append(per_epoch[0])
            later[name].append(statistics.mean(per_epoch[1:]))
            print(f"  round {r + 1} {name:16s} setup {setup[name][-1]:6.2f} s  first epoch {per_epoch[0]:6.2f} s  "
                  f"later epochs {later[name][-1]:6.2f} s  val_acc {best:.4f}")
    print("  seconds per epoch after the first:")
    show(later)
    print("  setup (loading, decoding into the cache, building):")
    show(setup)
    result = {"png cached/idx (later epochs)": paired(later, "png cache auto", "idx"),
              "png streamed/idx (later epochs)": paired(later, "png cache none", "idx"),
              "png cached/png streamed (later epochs)": paired(later, "png cache auto", "png cache none")}
    print_ratios("image-folder", result, headline="png cached/idx (later epochs)", target=1.3)
    return result


def reference_cnn() -> nn.Module:
    """mnist-cnn's architecture, written out: two (conv 3x3 without bias, BatchNorm, ReLU, max-pool)
    stages, a 128-wide dense layer with BatchNorm, ReLU and dropout, a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(128, 10))


def reference_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(),
                         nn.Linear(256, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))


def reference_resnet() -> nn.Module:
    from nnrun.components.models import build_model
    from nnrun.recipe.schema import ModelConfig

    return build_model(ModelConfig(arch="resnet", depth=20, width=16, norm="batch"), input_shape=(1, 28, 28),
                       num_outputs=10)


def hand_loop(model: nn.Module, data, *, epochs: int, precision: str = "fp32", seed: int = 0,
              lr: float = 1e-3) -> tuple[list[float], float]:
    """A careful hand-written loop: index batching, fused Adam, a validation pass per epoch.
    Returns (seconds of each epoch, final validation accuracy)."""
    tx, ty, vx, vy = data
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    cast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    times, acc = [], 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(tx), generator=g)
        for i in range(0, len(perm), BATCH):
            idx = perm[i:i + BATCH]
            with cast:
                loss = loss_fn(model(tx[idx]), ty[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        correct = torch.zeros((), dtype=torch.long)
        with torch.inference_mode(), cast:
            for i in range(0, len(vx), 512):
                correct += (model(vx[i:i + 512]).argmax(1) == vy[i:i + 512]).sum()
        acc = correct.item() / len(vx)
        times.append(time.perf_counter() - t0)
    return times, acc


def mnist_tensors(mnist: Path, limit: int | None):
    """The whitened training/validation tensors nnrun's mnist recipes use (same split and statistics)."""
    from nnrun import recipe as recipe_io
    from nnrun.build import build_data

    overrides = [f"data.path={mnist}"] + ([f"data.limit={limit}"] if limit else [])
    bundle, _ = build_data(recipe_io.load("mnist-cnn", overrides), base_dir=None)
    return bundle.train.x, bundle.train.y, bundle.val.x, bundle.val.y


def case_cnn(mnist: Path, rounds: int, epochs: int, tmp: Path, limit: int) -> dict:
    data = mnist_tensors(mnist, limit)
    overrides = [f"data.path={mnist}", f"data.limit={limit}", f"train.epochs={epochs}"]
    times: dict[str, list[float]] = {"nnrun mnist-cnn": [], "hand-written": [], "nnrun mnist-cnn bf16": []}
    for r in range(rounds):
        fit, _, best = train_nnrun("mnist-cnn", overrides, tmp / f"cnn-{r}")
        times["nnrun mnist-cnn"].append(fit)
        per_epoch, acc = hand_loop(reference_cnn(), data, epochs=epochs, seed=r)
        times["hand-written"].append(sum(per_epoch))
        bf16, _, best16 = train_nnrun("mnist-cnn", [*overrides, "train.precision=bf16"], tmp / f"cnn-bf16-{r}")
        times["nnrun mnist-cnn bf16"].append(bf16)
        print(f"  round {r + 1} nnrun {fit:6.2f} s (val_acc {best:.4f})  hand-written {sum(per_epoch):6.2f} s "
              f"(val_acc {acc:.4f})  nnrun bf16 {bf16:6.2f} s (val_acc {best16:.4f})")
    show(times)
    ratio = paired(times, "nnrun mnist-cnn", "hand-written")
    bf16_ratio = paired(times, "nnrun mnist-cnn bf16", "nnrun mnist-cnn")
    print(f"  [cnn] nnrun/hand-written: {ratio:.3f}x   target <= 1.0x -> {'met' if ratio <= 1.0 else 'MISSED'}")
    print(f"  [cnn] nnrun train.precision=bf16 / fp32: {bf16_ratio:.3f}x")
    return {"nnrun/hand-written": ratio, "bf16/fp32 (nnrun)": bf16_ratio}


def case_precision(mnist: Path, rounds: int, epochs: int, limit: int) -> dict:
    data = mnist_tensors(mnist, limit)
    models = {"mlp": reference_mlp, "cnn": reference_cnn, "resnet20": reference_resnet}
    result = {}
    for name, make in models.items():
        times: dict[str, list[float]] = {"fp32": [], "bf16": [], "compile": []}
        accs: dict[str, list[float]] = {k: [] for k in times}
        compile_s: list[float] = []
        for r in range(rounds):
            for mode in times:
                torch.manual_seed(r)
                model = make()
                extra = 0.0
                if mode == "compile":
                    torch._dynamo.reset()
                    model = torch.compile(model)
                precision = "bf16" if mode == "bf16" else "fp32"
                per_epoch, acc = hand_loop(model, data, epochs=epochs + 1, precision=precision, seed=r)
                if mode == "compile":
                    extra = per_epoch[0] - statistics.mean(per_epoch[1:])
                    compile_s.append(extra)
                times[mode].append(statistics.mean(per_epoch[1:]))
                accs[mode].append(acc)
        print(f"  {name}: seconds per epoch after the first ({limit or 'all'} examples)")
        show(times)
        bf16, comp = paired(times, "bf16", "fp32"), paired(times, "compile", "fp32")
        per, per_compiled = statistics.median(times["fp32"]), statistics.median(times["compile"])
        compile_time = statistics.median(compile_s)
        saved = per - per_compiled  # seconds an epoch of `limit` examples saves once compiled
        break_even = compile_time / saved if saved > 0 else float("inf")
        print(f"  [precision] {name}: bf16/fp32 {bf16:.3f}x  compile/fp32 {comp:.3f}x per epoch; compile time "
              f"{compile_time:.1f} s, repaid after {break_even:.1f} epochs of {limit} examples; val_acc fp32 "
              f"{statistics.mean(accs['fp32']):.4f} bf16 {statistics.mean(accs['bf16']):.4f} "
              f"compile {statistics.mean(accs['compile']):.4f}")
        result[name] = {"bf16/fp32": bf16, "compile/fp32": comp, "compile_s": compile_time,
                        "break_even_epochs": break_even}
    return result


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    except (OSError, StopIteration):
        isa = []
    return f"{cpu}, {torch.get_num_threads()} threads, {'/'.join(isa) or 'no AVX-512'}, torch {torch.__version__}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mnist", type=Path, help="folder with the MNIST IDX files")
    parser.add_argument("--cases", default="denormal,image-folder,cnn,precision")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (denormal, image-folder)")
    parser.add_argument("--limit", type=int, default=20000, help="training images (image-folder, cnn, precision)")
    parser.add_argument("--pngs", type=Path, help="where to keep the PNG folder between runs (default: a temp folder)")
    args = parser.parse_args()
    mnist = args.mnist.resolve()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for case in args.cases.split(","):
            print(f"\n== {case}")
            if case == "denormal":
                case_denormal(mnist, args.rounds, args.epochs, tmp)
            elif case == "image-folder":
                case_image_folder(mnist, args.rounds, args.epochs, tmp, args.limit, args.pngs)
            elif case == "cnn":
                case_cnn(mnist, args.rounds, 1, tmp, args.limit)
            elif case == "precision":
                case_precision(mnist, args.rounds, 1, min(args.limit, 10000))
            else:
                parser.error(f"unknown case {case}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
