"""`kogitune compress`: write the compressed sidecars of a data tensor (kogitune.sidecars)."""

from __future__ import annotations

from .common import EXIT_OK, HOME_HELP, at_least
from .look import TENSOR_HELP, _held


def add_commands(commands) -> None:
    compress = commands.add_parser(
        "compress",
        help="write compressed sidecars (shards/NNNNN.tokens.zst) that fetchers download instead of the tokens",
        description="Write beside each shard's tokens file a sidecar of one zstd frame per piece "
        "(docs/format.md#compressed-sidecars). A transfer encoding: the manifest, the piece hashes and the dataset "
        "ID do not change, training still maps the flat tokens, and a fetcher that finds a sidecar on a web mirror "
        "or node downloads about half the bytes (each frame decoded with a bound and checked against the "
        "manifest). Each piece is checked against its hash as it is compressed. A run that was interrupted skips "
        "the sidecars already written.",
    )
    compress.add_argument("tensor", metavar="DIR|ID", help=TENSOR_HELP)
    compress.add_argument(
        "--level",
        type=at_least(1, int),
        default=None,
        help="zstd level, 1 to 22 (default: the setting compression_level, 3: text tokens shrink to about half at "
        "200 MB/s a core; higher levels gain a few percent for several times the time)",
    )
    compress.add_argument("--workers", type=at_least(0, int), default=0, help="threads (default 0: one per core)")
    compress.add_argument("--overwrite", action="store_true", help="write sidecars again even if they are in place")
    compress.add_argument("--home", help=HOME_HELP)
    compress.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    compress.set_defaults(run=_compress)


def _compress(args) -> int:
    from tqdm import tqdm

    from ..sidecars import compress
    from ..tensor import DataTensor

    directory = _held(args, "compress")
    total = sum(shard.size for shard in DataTensor(directory).shards)
    with tqdm(total=total, unit="B", unit_scale=True, desc="compress", disable=True if args.quiet else None) as bar:
        report = compress(directory, args.level, args.workers, args.overwrite, bar.update)
    print(
        f"compressed {directory}: {report.compressed} sidecar(s) written, {report.skipped} already in place; "
        f"{report.tokens_bytes / 1e6:.1f} MB of tokens in {report.sidecar_bytes / 1e6:.1f} MB "
        f"({report.ratio:.2f}x smaller)"
    )
    return EXIT_OK
