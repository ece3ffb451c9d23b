"""Writing data tensors: `store` tokenizes text into a tensor directory (docs/format.md), whole or in parts.

One module per job, in the order the bytes pass through them:
- inputs.py: JSONL files (plain, .gz, .zst) read as batches of raw lines, with bounded memory (also used by filter);
  the inputs that globs and directories name; spans (parts of files);
- tables.py: the text column of Parquet and Arrow (HF datasets) files, as JSON lines;
- pack.py: documents to packed token ids (parse, stateless filters, tokenize, EOS), in order, here or in workers;
- shards.py: `TensorWriter`, which cuts packed tokens into shards of whole blocks and hashes their pieces;
- checkpoint.py: how far a store got, so that a run after an interruption goes on from there;
- job.py: `store` itself: options, the report, the lock, the `.partial` directory and the atomic swap;
- parts.py: the split of the inputs into N parts, `store_part` (one part) and `merge` (the parts' collection);
- executors.py: all N parts and the merge on local processes or Ray, or as a Slurm job-array script.
"""

from .inputs import BATCH_BYTES, MAX_DOCUMENT_BYTES, InputReader
from .job import StoreOptions, StoreReport, store
from .pack import pack_documents, tokenize_lines, worker_processes
from .shards import DTYPES_NP, TensorWriter

__all__ = [
    "BATCH_BYTES",
    "DTYPES_NP",
    "MAX_DOCUMENT_BYTES",
    "InputReader",
    "StoreOptions",
    "StoreReport",
    "TensorWriter",
    "pack_documents",
    "store",
    "tokenize_lines",
    "worker_processes",
]
