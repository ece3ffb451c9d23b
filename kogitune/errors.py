"""Kogitune's exceptions. All derive from KogituneError, which `kogitune.protocol` defines."""

from kogitune.protocol.errors import IntegrityError, KogituneError, ManifestError


class BadInputError(KogituneError):
    """Input text could not be read; the message names the file and line."""


class DiskFullError(KogituneError):
    """A file system is full (or a quota reached); the message names the path, what was kept and what to do."""


class TokenizerError(KogituneError):
    """A tokenizer could not be loaded, or two tensors use different tokenizers."""


class TensorError(KogituneError):
    """A data tensor directory is missing, incomplete or not what was asked for."""


class RecipeError(KogituneError):
    """A dataset recipe names something that cannot be used for training."""


__all__ = [
    "BadInputError",
    "DiskFullError",
    "IntegrityError",
    "KogituneError",
    "ManifestError",
    "RecipeError",
    "TensorError",
    "TokenizerError",
]
