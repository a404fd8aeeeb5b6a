"""nnrun: train PyTorch models from YAML recipes that declare the field's best practices.

Importing this package is cheap (no torch); the heavy modules load when used.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
