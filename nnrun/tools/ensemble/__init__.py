"""`nnrun ensemble`: combining checkpoints at prediction time. members: find, rank and check members,
average predictions; soups: average weights (uniform or greedy soup).

Not to be confused with the training-time `ensemble:` recipe section (EMA, SWA, snapshots, seeds),
which lives in `nnrun.training.averaging` and `nnrun.training.callbacks.EnsembleMembers`."""
