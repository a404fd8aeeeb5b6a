"""The checks of `nnrun overfit-one-batch`: report rows (rows), forward-hook probes (activations),
per-step observations (steps) and the memorization criteria (report)."""
