"""kogitune.settings: every default in one object, from defaults < config.json < environment < flags."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from kogitune.errors import SettingsError
from kogitune.layout import CONFIG_FILE
from kogitune.settings import DEFAULTS, FIELDS, FLAGS, Settings, env_var, load_settings

ROOT = Path(__file__).resolve().parent.parent


def write_config(home: Path, config) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / CONFIG_FILE).write_text(json.dumps(config))


def test_a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default(tmp_path):
    name = "reprovide_interval"
    assert load_settings(tmp_path, environ={}).reprovide_interval == DEFAULTS.reprovide_interval == 21600
    write_config(tmp_path, {name: 100, "bootstrap": ["/ip4/127.0.0.1/tcp/1/p2p/x"], "cache_limit": 0})
    assert load_settings(tmp_path, environ={}).reprovide_interval == 100
    environ = {env_var(name): "200", "KOGITUNE_READ_TIMEOUT": "2.5"}
    loaded = load_settings(tmp_path, environ=environ)
    assert (loaded.reprovide_interval, loaded.read_timeout, loaded.cache_limit) == (200, 2.5, 0)
    assert load_settings(tmp_path, environ=environ, flags={name: 300}).reprovide_interval == 300
    assert load_settings(tmp_path, environ=environ, flags={name: None}).reprovide_interval == 200  # flag not given
    assert load_settings(tmp_path, environ={env_var(name): " "}).reprovide_interval == 100  # set but empty


@pytest.mark.parametrize(
    "config, environ, message",
    [
        ({"read_timeout": "60"}, {}, r"config.json: read_timeout must be a number, got '60' \(default 30.0\)"),
        ({"read_timeout": 0}, {}, r"config.json: read_timeout must be more than 0, got 0"),
        ({"stall_timeout": -1}, {}, r"config.json: stall_timeout must be 0 or more, got -1"),
        ({"shards_at_once": 2.5}, {}, r"config.json: shards_at_once must be a whole number, got 2.5"),
        ({"host_connections_total": True}, {}, "host_connections_total must be a whole number, got True"),
        ({"read_timeot": 60}, {}, r"config.json: 'read_timeot' is not a setting; the settings are read_timeout, "),
        ([60], {}, r"config.json is a JSON list; write an object like"),
        ({}, {"KOGITUNE_MIN_RATE": "fast"}, r"\$KOGITUNE_MIN_RATE='fast' is not a number; unset it or give e.g. 1024"),
        ({}, {"KOGITUNE_CACHE_LIMIT": "nan"}, r"\$KOGITUNE_CACHE_LIMIT: cache_limit must be a number, got nan"),
        ({}, {"KOGITUNE_SERVER_STREAMS_TOTAL": "1e3"}, r"\$KOGITUNE_SERVER_STREAMS_TOTAL='1e3' is not a whole number"),
    ],
)
def test_a_bad_value_names_its_key_and_where_it_came_from(tmp_path, config, environ, message):
    write_config(tmp_path, config)
    with pytest.raises(SettingsError, match=message):
        load_settings(tmp_path, environ=environ)


def test_a_config_file_too_deep_or_too_long_is_refused_unread(tmp_path):
    (tmp_path / CONFIG_FILE).write_text("[" * 100_000)
    with pytest.raises(SettingsError, match="is not valid JSON .*nested deeper"):
        load_settings(tmp_path, environ={})
    (tmp_path / CONFIG_FILE).write_text(" " * (2 << 20) + "{}")
    with pytest.raises(SettingsError, match="is longer than 1048576 bytes"):
        load_settings(tmp_path, environ={})


def test_the_user_guide_documents_every_setting_with_its_variable_default_and_flag():
    guide = (ROOT / "docs" / "user-guide.md").read_text()
    rows = {row.split("|")[1].strip(" `"): row for row in guide.splitlines() if re.match(r"\| `[a-z_]+` \|", row)}
    for name in FIELDS:
        assert name in rows, f"docs/user-guide.md has no row for {name}"
        assert f"`{env_var(name)}`" in rows[name] and f"| {getattr(DEFAULTS, name):g} " in rows[name], rows[name]
        assert FIELDS[name].metadata["doc"], name
    for name, flag in FLAGS.items():
        assert flag.split()[-1] in rows[name], name
    assert isinstance(DEFAULTS, Settings)


def test_a_node_started_with_a_config_file_uses_it(tmp_path):
    """A real node whose config.json gives host_handshake_timeout 0.5 (default 5): a TCP connection that never starts
    its handshake is closed within about that, well before the default. A bad config.json stops the start with an
    error that names the key."""
    from netnodes import ENV, KOGITUNE, NodeProcess

    home = tmp_path / "home"
    write_config(home, {"host_handshake_timeout": 0.5})
    node = NodeProcess(home)
    try:
        port = int(node.address.split("/tcp/")[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            silent.settimeout(10)
            started = time.monotonic()
            try:
                while silent.recv(1024):  # the node may write its side of the handshake first
                    pass
            except ConnectionResetError:
                pass
            closed_after = time.monotonic() - started
    finally:
        node.close()
    assert closed_after < 3, f"closed after {closed_after:.1f} s: the config file's 0.5 s was not used"

    write_config(home, {"host_handshake_timeout": "soon"})
    result = subprocess.run(
        [KOGITUNE, "node", "start", "--home", str(home), "--listen", "/ip4/127.0.0.1/tcp/0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert result.returncode == 2, result.stderr
    assert f"{home / CONFIG_FILE}: host_handshake_timeout must be a number, got 'soon'" in result.stderr
