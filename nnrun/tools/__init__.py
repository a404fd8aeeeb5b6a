"""Layer 4, tools: the algorithms behind the tool commands (lr-find, overfit-one-batch diagnostics,
prediction-time ensembles, search on Optuna)."""
