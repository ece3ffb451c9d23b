"""`from kogitune.trainers import DatasetRecipe`, as the original Kogitune's users write it: DatasetRecipe lives in
kogitune.recipe (and is `kogitune.DatasetRecipe`).

A package rather than trainers.py, so that git, merging changes made to the old trainers.py, follows its rename to
recipe.py; it can become a one-file module again once no branch edits trainers.py."""

from ..recipe import DatasetRecipe

__all__ = ["DatasetRecipe"]
