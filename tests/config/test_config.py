"""Node configuration files: every section read, relative paths resolved, bad input named."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringstore.config import ConfigError, load_config

MINIMAL = '[node]\nname = "n1"\ndata_dir = "data"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_minimal_file_gets_every_default(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.data_dir == (tmp_path / "data").resolve()
    assert config.ring_size == 64 and config.n_val == 3
    assert config.http.max_connections == 1024 and config.http.tls_cert_file is None
    assert config.storage.chunk_size == 1 << 20 and config.tls is None


def test_every_section_is_read_with_paths_relative_to_the_file(tmp_path):
    text = MINIMAL + (
        'secret_file = "secret"\n'
        "[storage]\nchunk_size = 65536\ninline_max = 1024\n"
        '[http]\nmax_connections = 8\nheader_timeout_s = 2.5\ntls_cert_file = "c.pem"\n'
        'tls_key_file = "k.pem"\n'
        '[tls]\nca_file = "ca.pem"\ncert_file = "n.pem"\nkey_file = "n.key"\n'
        '[[members]]\nname = "n1"\nhost = "127.0.0.1"\nport = 9001\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.secret_file == (tmp_path / "secret").resolve()
    assert config.storage.chunk_size == 65536
    assert config.http.max_connections == 8 and config.http.header_timeout_s == 2.5
    assert config.http.tls_key_file == (tmp_path / "k.pem").resolve()
    assert config.tls is not None and config.tls.ca_file == (tmp_path / "ca.pem").resolve()
    assert [m.name for m in config.members] == ["n1"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[http]\nmax_connections = 0\n", "http.max_connections"),
        ("[http]\nidle_timeout_s = -1\n", "http.idle_timeout_s"),
        ('[http]\ntls_cert_file = "c.pem"\n', "go together"),
        ("[http]\nspeed = 3\n", "unknown option"),
        ("[storage]\nchunk_size = 10\n", "chunk_size"),
        ("[storage]\nuploads_in_flight = 0\n", "storage.uploads_in_flight"),
        ('[storage]\nuploads_in_flight = "8"\n', "uploads_in_flight"),
        ("[nodes]\n", "unknown section"),
        ("ring_size = 100\n", "ring_size"),
    ],
)
def test_bad_values_are_named(tmp_path, extra, message):
    text = MINIMAL + extra if extra.startswith("[") else MINIMAL + extra
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(write(tmp_path, "[node\n"))
    with pytest.raises(ConfigError, match="needs name and data_dir"):
        load_config(write(tmp_path, '[node]\nname = "x"\n'))
