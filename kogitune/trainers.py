"""Dataset recipes: name data tensors, get a PyTorch dataset for training.

    from kogitune.trainers import DatasetRecipe
    recipe = DatasetRecipe(["./gpt2-f04f/wiki2023_tiny"])
    train_dataset = recipe.get_train_dataset()
"""

from __future__ import annotations

from pathlib import Path

from kogitune.protocol.ids import is_dataset_id

from .errors import RecipeError, TokenizerError
from .tensor import DataTensor


class DatasetRecipe:
    """A list of data tensors to train on, each named by a local path."""

    def __init__(self, url_list: str | list[str], block_size: int | None = None) -> None:
        self.sources = [url_list] if isinstance(url_list, str) else list(url_list)
        if not self.sources:
            raise RecipeError("a recipe needs at least one data tensor (a path)")
        self.block_size = block_size

    def tensors(self) -> list[DataTensor]:
        tensors = [_open_source(source) for source in self.sources]
        first = tensors[0]
        for tensor in tensors[1:]:
            if tensor.manifest.tokenizer.fingerprint != first.manifest.tokenizer.fingerprint:
                raise TokenizerError(
                    f"{tensor.path} was tokenized with {tensor.manifest.tokenizer.id} but {first.path} with "
                    f"{first.manifest.tokenizer.id}: a recipe can only mix tensors of the same tokenizer; "
                    "store them again with one tokenizer"
                )
        return tensors

    def get_train_dataset(self, block_size: int | None = None):
        """A map-style `torch.utils.data.Dataset` of `{"input_ids": LongTensor[block_size]}`."""
        from .datasets import TokenBlockDataset

        return TokenBlockDataset(self.tensors(), block_size or self.block_size)


def _open_source(source: str) -> DataTensor:
    if source.startswith(("http://", "https://")):
        raise RecipeError(f"{source}: web mirrors are not supported yet; download the directory and name its path")
    if is_dataset_id(source) and not Path(source).exists():
        raise RecipeError(f"{source}: dataset IDs need the Kogitune network, which is not built yet; "
                          "name the tensor's local path")
    return DataTensor(source)
