"""Kogitune: tokenize text once into content-addressed data tensors, share them, train from a recipe.

Importing this package is cheap: torch, transformers and libp2p are imported only where they are used.
"""

from .errors import KogituneError

__version__ = "0.1.0"
__all__ = ["KogituneError", "__version__"]
