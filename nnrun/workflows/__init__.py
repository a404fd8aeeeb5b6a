"""Use cases, one module each, usable from Python without the CLI."""
