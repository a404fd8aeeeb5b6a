"""Hyperparameter search on Optuna: the `search` recipe section, coarse-to-fine stages, the
edge warning, storages and workers. The use case is :func:`nnrun.workflows.search.run`."""

from nnrun.search.edges import edge_warnings
from nnrun.search.space import Param, SearchSpec, Stage, parse, search_problems, suggest
from nnrun.search.stages import narrow

__all__ = ["Param", "SearchSpec", "Stage", "edge_warnings", "narrow", "parse", "search_problems", "suggest"]
