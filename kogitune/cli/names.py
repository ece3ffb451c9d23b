"""Commands that pin what a recipe means: `lock` (a recipe to a lock file of dataset IDs) and `resolve` (a name
to the dataset ID it points to now)."""

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
