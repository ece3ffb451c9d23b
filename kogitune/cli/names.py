"""Commands that pin what a recipe means: `lock` (a recipe to a lock file of dataset IDs), `resolve` (a name to the
dataset ID it points to now), and `publish LOCK` (a lock on the DHT under its recipe ID; `publish` is network.py's)."""

from __future__ import annotations

from .common import EXIT_OK, HOME_HELP, home_of


def add_commands(commands) -> None:
    lock = commands.add_parser(
        "lock",
        help="pin a recipe to dataset IDs (a lock file) and print its recipe ID",
        description="Read RECIPE (a JSON list of the entries DatasetRecipe takes: paths, mirror URLs, dataset IDs, "
        "names <peer ID>/<name>, lists and dicts), resolve each entry to the dataset ID it stands for now, write "
        "the lock file and print the recipe ID (kgr1-...). DatasetRecipe.from_lock(LOCK) then gives the same "
        "samples in the same order on any machine, even after a name moved on or a mirror moved.",
    )
    lock.add_argument("recipe", help="a JSON file holding the list of recipe entries")
    lock.add_argument("-o", "--output", required=True, help="the lock file to write (e.g. RECIPE.lock.json)")
    lock.add_argument("--home", help=HOME_HELP)
    lock.set_defaults(run=_lock)
    resolve = commands.add_parser(
        "resolve",
        help="print the dataset ID a name points to now",
        description="NAME is <peer ID>/<name> (the newest valid record on the DHT, through the node of --home or "
        "a node started for the lookup), or a bare name this node publishes (`publish --name`).",
    )
    resolve.add_argument("name", help="<peer ID>/<name>, or a name this node publishes")
    resolve.add_argument("--home", help=HOME_HELP)
    resolve.set_defaults(run=_resolve)


def _resolve(args) -> int:
    from ..names import resolve_name

    print(resolve_name(args.name, home_of(args)))
    return EXIT_OK


def _lock(args) -> int:
    import json
    from pathlib import Path

    from ..content_store import ContentStore
    from ..errors import RecipeError
    from ..lock import lock_recipe, write_lock

    try:
        entries = json.loads(Path(args.recipe).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RecipeError(f"{args.recipe} is not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise RecipeError(f"{args.recipe} holds a JSON {type(entries).__name__}, not a list of recipe entries")
    lock = lock_recipe(entries, ContentStore(home_of(args)))
    write_lock(lock, args.output)
    print(lock.recipe_id)
    return EXIT_OK


def lock_file(path: str):
    """The recipe lock in `path` if it is a file holding one, else None (`publish` then hands the path to the node,
    which says what it is not)."""
    from pathlib import Path

    from ..errors import ManifestError
    from ..lock import read_lock

    if not Path(path).is_file():
        return None
    try:
        return read_lock(path)
    except (ManifestError, OSError):
        return None


def publish_lock(args, lock) -> int:
    """`kogitune publish LOCK`: the node keeps the lock and puts it on the DHT; prints the recipe ID."""
    from kogitune.protocol.lock import published_lock_bytes

    from ..client import DaemonClient
    from ..errors import RecipeError

    if args.allow or args.name is not None:
        raise RecipeError("a lock file is published as it is; --allow and --name are for datasets")
    data = published_lock_bytes(lock)
    print(DaemonClient(home_of(args)).call("publish_lock", lock=data.decode())["id"])
    return EXIT_OK
