"""Every default a user may change: timeouts, sizes and a node's limits, in one frozen dataclass.

`settings()` is what the code reads. Each field is taken from, in increasing priority:

1. its built-in default (below; `DEFAULTS`);
2. the key of the same name in the home's config file, `<home>/config.json` (a JSON object; the home is
   `kogitune node start --home`, else `$KOGITUNE_HOME`, see kogitune.content_store.kogitune_home);
3. the environment variable `KOGITUNE_<NAME IN CAPITALS>` (e.g. `KOGITUNE_READ_TIMEOUT`);
4. a command-line flag, where one exists (`FLAGS`; the CLI passes the flags it was given to `configure`).

The file and the environment are read once, and again only when they change (the file's size, time or inode, or a
`KOGITUNE_*` value), so a setting costs a dictionary lookup. A bad value is a SettingsError naming the key and where
it came from. docs/user-guide.md lists every key. The limits of the protocol (the MAX_* of kogitune.protocol) are
the contract between nodes, not settings: they are not here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SettingsError
from .layout import CONFIG_FILE

DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/4011"
"""Where a node listens unless `kogitune node start --listen` says otherwise (an address, so a flag, not a Settings
field: settings are numbers)."""
MAX_CONFIG_BYTES = 1 << 20
"""A config file longer than this is refused unread (it holds a few dozen numbers)."""
OTHER_CONFIG_KEYS = {"bootstrap"}
"""Keys of config.json that are not settings: `bootstrap` (peers to join through) is read by kogitune.node.service,
which adds the peers of the flags, the file and $KOGITUNE_BOOTSTRAP together instead of choosing one."""


def _setting(default, doc: str, *, zero_ok: bool = False, flag: str = ""):
    """A field of Settings: `doc` says what it is; a number must be above 0 (at least 0 with `zero_ok`)."""
    return field(default=default, metadata={"doc": doc, "zero_ok": zero_ok, "flag": flag})


@dataclass(frozen=True)
class Settings:
    """The defaults of one process (see the module docstring for where each value comes from)."""

    # timeouts, in seconds
    read_timeout: float = _setting(30.0, "Each network read from a peer or a web mirror (a failure of that source).")
    fetch_timeout: float = _setting(
        300.0, "A training process's wait for one shard, or for a control operation of the node daemon."
    )
    connect_timeout: float = _setting(10.0, "A connection to a peer (provider or bootstrap peer).")
    lookup_deadline: float = _setting(30.0, "How long a provider lookup in the DHT goes on before it finds none.")
    stall_timeout: float = _setting(
        60.0,
        "A shard fetch with no verified byte for this long fails, naming what each source did (0: off).",
        zero_ok=True,
    )
    min_rate: float = _setting(
        1024.0, "Bytes per second below which a source's stream counts as failed (0: off).", zero_ok=True
    )
    rate_window: float = _setting(10.0, "The window over which a stream must deliver min_rate.")
    job_peer_patience: float = _setting(
        2.0,
        "While a peer of the training job holds a shard, the other sources join its fetch only after this many "
        "seconds without a verified piece.",
    )
    job_peer_min_rate: float = _setting(
        4.0,
        "MB (decimal) per second a shard's fetch must average while the other sources stand by for a job peer: once it "
        "falls job_peer_patience seconds behind this pace, they join (0: off).",
        zero_ok=True,
    )
    reprovide_interval: float = _setting(
        6 * 3600.0,
        "How often a node announces its datasets again (DHT records expire after 48 h).",
        flag="kogitune node start --reprovide-interval",
    )
    host_node: int = _setting(
        1,
        "Training processes of one host share a node daemon they start: 0 never (each runs its own embedded node), "
        "1 under torchrun with more than one process per host (LOCAL_WORLD_SIZE > 1), 2 always.",
        zero_ok=True,
    )
    # sizes and counts
    cache_limit: float = _setting(
        50.0,
        "Size of the content store in GB (decimal) that `gc` trims to; trainers trim after each mirror fetch.",
        zero_ok=True,
        flag="kogitune cache gc --limit",
    )
    shards_at_once: int = _setting(
        4, "Shards the fetch service (a node's or a training process's) fetches at once, whatever asks for them."
    )
    prefetch_shards: int = _setting(
        1, "Shards of a dataset fetched ahead of need at once (each streams from every source)."
    )
    check_threads: int = _setting(
        2,
        "Worker threads that hash and write received pieces while the event loop receives the next ones (0: none, "
        "pieces are checked between receives: ~15% less CPU per byte, a little slower).",
        zero_ok=True,
    )
    http_connections: int = _setting(
        2, "Connections to one HTTP source (web mirror, data port) while it streams fewer shards than this."
    )
    partitions: int = _setting(
        0,
        "Canonical partitions of a training dataset's epoch order (docs/datasets.md); 0: the job's world size.",
        zero_ok=True,
    )
    # compressed sidecars (kogitune.sidecars, docs/format.md#compressed-sidecars)
    compression_level: int = _setting(
        3,
        "zstd level of the sidecars `kogitune compress` writes, 1 to 22 (3: half the bytes of text tokens, written "
        "at 200 MB/s a core).",
        flag="kogitune compress --level",
    )
    compressed_transfer: int = _setting(
        1,
        "1: fetch a shard's compressed sidecar from the sources that offer one (about half the bytes, decoded and "
        "verified at ~0.7 GB/s a core); 0: always fetch the flat tokens.",
        zero_ok=True,
    )
    # what the node's host admits (kogitune.node.host.HostLimits)
    host_handshake_timeout: float = _setting(5.0, "Seconds an incoming connection has for its Noise + Yamux setup.")
    host_handshakes_per_ip: int = _setting(8, "Incoming connections from one IP in their handshake at once.")
    host_handshakes_total: int = _setting(64, "Incoming connections in their handshake at once, in all.")
    host_handshakes_waiting_per_ip: int = _setting(64, "Incoming connections from one IP waiting for a handshake.")
    host_connections_per_ip: int = _setting(64, "Established incoming connections from one IP.")
    host_connections_total: int = _setting(200, "Established incoming connections in all.")
    # what the node's data server serves (kogitune.node.server.ServerLimits)
    server_request_timeout: float = _setting(
        5.0, "Seconds a peer's stream, or a data port connection, has to deliver its request (head)."
    )
    server_write_timeout: float = _setting(
        32.0, "Seconds one 1 MiB write of a response may take, on libp2p and the data port (a slower reader is cut)."
    )
    server_streams_per_peer: int = _setting(8, "Streams one peer identity may have served at once.")
    server_streams_per_ip: int = _setting(
        64, "Streams all the identities behind one IP may have served at once (and data port connections)."
    )
    server_streams_total: int = _setting(
        128, "Streams served at once, shared fairly between IPs when full (and data port connections)."
    )
    # the data port: public datasets over HTTP (kogitune.node.dataport; its other limits are the server_* above)
    data_port: int = _setting(
        0,
        "Port of the data port, on the host of the first --listen address (0: any free port, announced to peers).",
        zero_ok=True,
        flag="kogitune node start --data-listen",
    )
    data_port_on: int = _setting(
        1, "1: a node serves its datasets on its data port (private ones over TLS only); 0: it does not.", zero_ok=True
    )
    data_port_requests_per_connection: int = _setting(1000, "Requests one connection to the data port may make.")
    # monitoring (kogitune.progress, kogitune.node.status_page)
    progress_interval: float = _setting(
        10.0,
        "Seconds between the lines a training process (rank 0) prints while it waits for a shard (0: none).",
        zero_ok=True,
    )
    metrics_port: int = _setting(
        0,
        "Port on 127.0.0.1 where a node serves Prometheus metrics (/metrics) and a status page (/) (0: off).",
        zero_ok=True,
        flag="kogitune node start --metrics",
    )


DEFAULTS = Settings()
FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
FLAGS = {name: f.metadata["flag"] for name, f in FIELDS.items() if f.metadata["flag"]}


def env_var(name: str) -> str:
    """The environment variable of a setting: KOGITUNE_ and its name in capitals."""
    return f"KOGITUNE_{name.upper()}"


def load_settings(home: Path, environ=None, flags: dict | None = None) -> Settings:
    """The settings of `home`: its config file over the defaults, the environment (`os.environ` unless given) over
    that, and `flags` (setting name -> value, None for a flag not given) over all."""
    environ = os.environ if environ is None else environ
    values = {}
    path = Path(home) / CONFIG_FILE
    for name, value in _read_config(path).items():
        values[name] = _checked(name, value, str(path))
    for name in FIELDS:
        text = environ.get(env_var(name), "")
        if text.strip():
            values[name] = _checked(name, _parse(name, text.strip(), f"${env_var(name)}"), f"${env_var(name)}")
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _checked(name, value, f"the flag of {name}")
    return Settings(**values)


_home: Path | None = None
_flags: dict = {}
_loaded: tuple[tuple, Settings] | None = None


def configure(home: Path | None = None, flags: dict | None = None) -> None:
    """Use `home`'s config file (instead of $KOGITUNE_HOME's) and these flags from now on in this process; the CLI
    calls this before it starts a node, so that the node's modules read its settings."""
    global _home, _flags
    _home, _flags = (Path(home) if home is not None else None), dict(flags or {})


def settings() -> Settings:
    """This process's settings: loaded on first use, and again only when the config file or the environment
    changed."""
    global _loaded
    from .content_store import kogitune_home

    home = _home if _home is not None else kogitune_home()
    try:
        st = os.stat(home / CONFIG_FILE)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
    except OSError:
        stamp = None
    key = (home, stamp, tuple(os.environ.get(env_var(name)) for name in FIELDS), tuple(_flags.items()))
    if _loaded is None or _loaded[0] != key:
        _loaded = (key, load_settings(home, flags=_flags))
    return _loaded[1]


def _read_config(path: Path) -> dict:
    """The settings in a config file (none if there is no file), its other keys left out."""
    return {name: value for name, value in read_config(path).items() if name in FIELDS}


def read_config(path: Path) -> dict:
    """A config file's JSON object, every key checked ({} if there is no file): the one reader of config.json, for
    the settings here and for `bootstrap` (kogitune.node.service)."""
    from kogitune.protocol.jsonlimits import loads

    from .files import read_limited

    try:
        data = read_limited(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise SettingsError(f"{path} is longer than {MAX_CONFIG_BYTES} bytes; it should hold a JSON object of settings")
    try:
        config = loads(data)
    except ValueError as exc:
        raise SettingsError(f'{path} is not valid JSON ({exc}); write an object like {{"read_timeout": 60}}') from None
    if not isinstance(config, dict):
        raise SettingsError(f'{path} is a JSON {type(config).__name__}; write an object like {{"read_timeout": 60}}')
    unknown = sorted(set(config) - set(FIELDS) - OTHER_CONFIG_KEYS)
    if unknown:
        raise SettingsError(
            f"{path}: {unknown[0]!r} is not a setting; the settings are {', '.join(FIELDS)} (docs/user-guide.md)"
        )
    return config


def _parse(name: str, text: str, source: str):
    """The number that an environment variable spells, as the setting's type."""
    try:
        return int(text) if FIELDS[name].type == "int" else float(text)
    except ValueError:
        kind = "a whole number" if FIELDS[name].type == "int" else "a number"
        raise SettingsError(
            f"{source}={text!r} is not {kind}; unset it or give e.g. {getattr(DEFAULTS, name)}"
        ) from None


def _checked(name: str, value, source: str):
    """`value` for setting `name` if it is a number of the right kind and range, else a SettingsError saying what
    `source` (a file, a variable, a flag) should give instead."""
    whole = FIELDS[name].type == "int"
    zero_ok = FIELDS[name].metadata["zero_ok"]
    is_number = isinstance(value, int) if whole else isinstance(value, (int, float))
    if isinstance(value, bool) or not is_number or (not whole and not math.isfinite(value)):
        kind = "a whole number" if whole else "a number"
        raise SettingsError(f"{source}: {name} must be {kind}, got {value!r} (default {getattr(DEFAULTS, name)})")
    if value < 0 or (value == 0 and not zero_ok):
        bound = "0 or more" if zero_ok else "more than 0"
        raise SettingsError(f"{source}: {name} must be {bound}, got {value!r} (default {getattr(DEFAULTS, name)})")
    return value if whole else float(value)
