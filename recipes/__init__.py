"""The recipes that ship with nnrun (YAML files, installed as `nnrun.recipes`; read with importlib.resources).

Not to be confused with `nnrun.recipe`, the code that loads and validates recipes.
"""
