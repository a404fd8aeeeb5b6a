"""`train.threads` for the duration of a workflow call, restored afterwards.

A library call must leave no global state behind: a recipe with `train.threads: 1` would
otherwise slow (and change the float rounding of) everything the caller runs next.
"""

from __future__ import annotations

import functools


def recipe_threads(fn):
    """Decorate a workflow whose first argument is a Recipe: run it with `recipe.train.threads`."""

    @functools.wraps(fn)
    def wrapper(recipe, *args, **kwargs):
        import torch

        previous = torch.get_num_threads()
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)
        try:
            return fn(recipe, *args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper
