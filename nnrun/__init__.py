"""nnrun: train PyTorch models from YAML recipes that declare the field's best practices.

Importing this package is cheap (no torch); the heavy modules load on first use::

    import nnrun
    r = nnrun.load_recipe("quickstart", ["train.epochs=5"])
    result = nnrun.train(r, run_dir="runs/demo")
    print(nnrun.predict(result.best_checkpoint, split="test").metrics)
"""

from nnrun._version import __version__

__all__ = ["__version__", "load_recipe", "train", "predict"]


def load_recipe(name_or_path, overrides=()):
    """Read and validate a recipe file or shipped recipe (see :func:`nnrun.recipe.load`)."""
    from nnrun.recipe import load

    return load(name_or_path, overrides)


def train(recipe, **kwargs):
    """Train a validated recipe (see :func:`nnrun.workflows.train.run`)."""
    from nnrun.workflows.train import run

    return run(recipe, **kwargs)


def predict(checkpoint, **kwargs):
    """Predict with a checkpoint (see :func:`nnrun.workflows.predict.run`)."""
    from nnrun.workflows.predict import run

    return run(checkpoint, **kwargs)
