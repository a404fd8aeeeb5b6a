"""Layer 2, components: each turns one recipe section into a torch object (model, norm, init, freeze,
optimizer, schedule, loss, metrics)."""
