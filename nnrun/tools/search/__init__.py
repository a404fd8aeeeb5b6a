"""Search on Optuna: storages and studies (study), drawing values (sampling), coarse-to-fine narrowing
(stages), the edge warning (edges) and the worker that runs trials (worker). The `search` recipe
section itself is `nnrun.recipe.search`; the use case is `nnrun.workflows.search`."""
