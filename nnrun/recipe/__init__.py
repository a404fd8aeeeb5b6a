"""Layer 1, the recipe: YAML text -> a validated, frozen :class:`Recipe`. No torch here.

`schema` declares every key (default, practice, allowed values); `tables` holds the facts the
checks need (metrics, data sources); `load` parses and validates; `checks` and `rules` hold the
cross-field rules; `search` is the `search` section; `reference` generates the documentation.
(Not to be confused with `nnrun.recipes`, the shipped YAML files.)
"""

from nnrun.recipe.load import (
                               Source,
                               dump,
                               from_dict,
                               load,
                               locate,
                               parse_overrides,
                               parse_text,
                               shipped_recipes,
                               to_dict,
                               validate,
)
from nnrun.recipe.schema import Recipe

__all__ = ["Recipe", "Source", "dump", "from_dict", "load", "locate", "parse_overrides", "parse_text",
           "shipped_recipes", "to_dict", "validate"]
