"""`from kogitune.trainers import DatasetRecipe`, as the original Kogitune's users write it: DatasetRecipe lives in
kogitune.recipe (and is `kogitune.DatasetRecipe`)."""

from .recipe import DatasetRecipe

__all__ = ["DatasetRecipe"]
