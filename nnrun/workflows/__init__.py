"""Layer 5, use cases: one module per command, usable from Python without the CLI. No workflow
imports another (modules starting with `_` are shared helpers)."""
