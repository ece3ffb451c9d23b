"""PyTorch datasets over data tensors.

A sample is a run of `block_size` consecutive tokens. Samples never cross shard boundaries, so one sample is one
slice of one memory map: the Megatron recipe of a flat token array plus a small index (here, a list of where each
shard's samples begin).
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np
import torch

from .errors import RecipeError
from .tensor import DataTensor


class TokenBlockDataset(torch.utils.data.Dataset):
    """Map-style dataset over one or more tensors: item i is `{"input_ids": LongTensor[block_size]}`.

    `block_size` must divide the stored block size, so 512 from tensors stored with 2048 gives 4 samples per stored
    block. Samples that would hold only the last block's padding are left out; the last sample may end in EOS padding.
    """

    def __init__(self, tensors: list[DataTensor], block_size: int | None = None) -> None:
        if not tensors:
            raise RecipeError("a dataset needs at least one data tensor")
        self.block_size = block_size or tensors[0].manifest.block_size
        self.tensors = tensors
        self._spans: list[tuple[int, int]] = []
        self._first_sample: list[int] = []
        total = 0
        for tensor_index, tensor in enumerate(tensors):
            stored = tensor.manifest.block_size
            if stored % self.block_size:
                raise RecipeError(f"block size {self.block_size} does not divide the stored block size {stored} of "
                                  f"{tensor.path}; choose a divisor of {stored}")
            tokens_left = tensor.manifest.tokens
            for shard_index, shard in enumerate(tensor.shards):
                real = min(tokens_left, shard.blocks * stored)
                tokens_left -= real
                self._spans.append((tensor_index, shard_index))
                self._first_sample.append(total)
                total += -(-real // self.block_size)
        self._length = total

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"sample {index} is out of range for a dataset of {self._length} samples")
        span = bisect_right(self._first_sample, index) - 1
        tensor_index, shard_index = self._spans[span]
        start = (index - self._first_sample[span]) * self.block_size
        tokens = self.tensors[tensor_index].shard_tokens(shard_index)[start:start + self.block_size]
        return {"input_ids": torch.from_numpy(tokens.astype(np.int64))}
