"""Node configuration: frozen dataclasses read from TOML, every option with default and reason."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringstore.errors import BadRequest

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")  # Python logging's level names


class ConfigError(BadRequest):
    """A configuration file that cannot be used; the message names the option."""


@dataclass(frozen=True, slots=True)
class StorageConfig:
    # Values up to this size live in the object record: one LMDB read serves them.
    inline_max: int = 16 * 1024
    # Chunk size bounds the memory a transfer holds and the unit of verification/fallback.
    chunk_size: int = 1024 * 1024
    # LMDB reserves address space, not disk: large enough never to fill on a dev machine.
    map_size: int = 64 * 1024**3
    # An unreferenced chunk is kept this long so an upload in flight can still commit it.
    sweep_grace_s: float = 3600.0
    # Scrub reads at most this many bytes per second so it never starves requests.
    scrub_bytes_per_s: float = 32 * 1024 * 1024
    # Large values (over inline_max) this node takes in at once as coordinator. Each holds a
    # few chunks in memory while it streams to the replicas, so this bounds a node's upload
    # memory; further uploads wait for a turn before their body is read.
    uploads_in_flight: int = 8

    def __post_init__(self) -> None:
        for name in ("chunk_size", "inline_max", "uploads_in_flight"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"storage.{name} must be an integer, not {value!r}")
        if self.chunk_size < 4096 or self.chunk_size > 16 * 1024 * 1024:
            raise ConfigError("storage.chunk_size must be between 4096 and 16777216 bytes")
        if not 1 <= self.uploads_in_flight <= 4096:
            raise ConfigError("storage.uploads_in_flight must be between 1 and 4096")
        if not 0 <= self.inline_max <= self.chunk_size:
            raise ConfigError("storage.inline_max must be between 0 and storage.chunk_size")


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The client-facing HTTP server's bounds (every one a client could otherwise stretch)."""

    # Beyond this many open connections new ones get 503 at once instead of queueing.
    max_connections: int = 1024
    # Request line + headers: a large vclock plus user metadata fits in 64 KiB.
    max_header_bytes: int = 64 * 1024
    # Values stream in chunks, so this guards disk space, not memory.
    max_object_bytes: int = 5 * 1024**3
    idle_timeout_s: float = 60.0  # a keep-alive connection with no new request
    header_timeout_s: float = 15.0  # from a request's first byte to the end of its headers
    body_idle_timeout_s: float = 30.0  # the longest silence inside a request body
    send_timeout_s: float = 60.0  # the longest one write may wait on a slow reader
    # HTTPS when both are set (a PEM certificate chain and its key).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_header_bytes", "max_object_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"http.{name} must be a positive integer")
        for name in ("idle_timeout_s", "header_timeout_s", "body_idle_timeout_s", "send_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"http.{name} must be a positive number of seconds")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("http.tls_cert_file and http.tls_key_file go together")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Mutual TLS between peers: every node presents a certificate signed by `ca_file`."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class PeerAddress:
    name: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    data_dir: Path
    http_host: str = "127.0.0.1"
    http_port: int = 8098  # Riak's HTTP port, so clients find us where they expect
    peer_host: str = "127.0.0.1"
    peer_port: int = 8099
    # Fixed when the cluster is created, as in Riak: a power of two in 8..1024.
    ring_size: int = 64
    # Replicas per object unless a bucket says otherwise.
    n_val: int = 3
    log_level: str = "INFO"
    # `ringstore serve` logs here as well as to stderr; None: node.log in the data directory,
    # so a node's log travels with its data.
    log_file: Path | None = None
    secret_file: Path | None = None
    members: tuple[PeerAddress, ...] = ()
    storage: StorageConfig = field(default_factory=StorageConfig)
    # Without it peers still prove the cluster secret, but traffic is not encrypted.
    tls: TlsConfig | None = None
    http: HttpConfig = field(default_factory=HttpConfig)

    def __post_init__(self) -> None:
        if self.ring_size < 8 or self.ring_size > 1024 or self.ring_size & (self.ring_size - 1):
            raise ConfigError("ring_size must be a power of two between 8 and 1024")
        if not 1 <= self.n_val <= 10:
            raise ConfigError("n_val must be between 1 and 10")
        if not isinstance(self.log_level, str) or self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")

    @property
    def log_path(self) -> Path:
        """Where `ringstore serve` writes this node's log file."""
        return self.log_file if self.log_file is not None else self.data_dir / "node.log"


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown option(s) in {where or 'top level'}: {', '.join(unknown)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def load_config(path: Path) -> NodeConfig:
    """Read a node's TOML file; relative paths in it are relative to the file."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    node = dict(raw.get("node", {}))
    base = path.parent
    if "data_dir" not in node or "name" not in node:
        raise ConfigError(f"{path}: [node] needs name and data_dir")
    node["data_dir"] = (base / node["data_dir"]).resolve()
    for name in ("secret_file", "log_file"):
        if name in node:
            if not isinstance(node[name], str) or not node[name]:
                raise ConfigError(f"{path}: [node] {name} must be a non-empty path string")
            node[name] = (base / node[name]).resolve()
    node["storage"] = _build(StorageConfig, dict(raw.get("storage", {})), "[storage]")
    node["members"] = tuple(
        _build(PeerAddress, dict(member), "[[members]]") for member in raw.get("members", [])
    )
    if "tls" in raw:
        tls = {name: (base / value).resolve() for name, value in dict(raw["tls"]).items()}
        node["tls"] = _build(TlsConfig, tls, "[tls]")
    http = dict(raw.get("http", {}))
    for name in ("tls_cert_file", "tls_key_file"):
        if name in http:
            http[name] = (base / http[name]).resolve()
    node["http"] = _build(HttpConfig, http, "[http]")
    extra = sorted(set(raw) - {"node", "storage", "members", "tls", "http"})
    if extra:
        raise ConfigError(f"{path}: unknown section(s): {', '.join(extra)}")
    return _build(NodeConfig, node, "[node]")
