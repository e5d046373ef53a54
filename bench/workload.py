"""Describe one load run: its targets, operations, keys, values and bounds, all validated.

Everything here is pure: key and size draws take a `random.Random`, so a seed fixes a run's
sequence of operations. Only loopback targets (127.0.0.0/8, ::1, localhost) are accepted
unless `allow_remote`: a load generator pointed at someone else's machine by a typo is an
attack on it.

Values are slices of one seeded random source at random offsets, so PUT bodies differ (the
store's content-addressed chunks would otherwise keep one copy of them all) without making
fresh random bytes per operation on a machine the store itself needs.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ringstore.errors import BadRequest

DEFAULT_TIMEOUT_S = 60.0  # Riak's default request timeout: a slower answer is an error
SOURCE_SLACK_BYTES = 1024 * 1024  # offsets into the value source: ~1M distinct values
MAX_VALUE_BYTES = 256 * 1024**2  # the value source is held in memory
MAX_CONCURRENCY = 4096  # one socket per worker; beyond this the generator measures itself
MAX_KEYS = 10**9  # key names stay short and fixed-width
PARETO_SHAPE = 1.5  # basho_bench's pareto_int: most requests go to a fifth of the keys
PARETO_MEAN_FRACTION = 0.2  # ... that fifth
EXPONENTIAL_CAP_MEANS = 20  # exponential sizes stop here (a chance of e**-20 per value)
SHOWN_CHARS = 60  # error messages quote bad input cut to this

OPERATIONS = ("get", "put", "delete")
KEY_DISTRIBUTIONS = ("uniform", "pareto", "sequential")
QUORUM_OPTIONS = ("r", "w", "dw", "rw", "pr", "pw")
QUORUM_WORDS = frozenset({"one", "quorum", "all", "default"})
_SIZE = re.compile(r"(?i)\s*([0-9]+)\s*(b|k|kib|m|mib|g|gib)?\s*")
_SIZE_UNITS = {None: 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2}
_SIZE_UNITS |= {"g": 1024**3, "gib": 1024**3}


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def parse_size(text: str) -> int:
    """`4096`, `4KiB`, `1MiB`, `1g` (units are powers of 1024) -> bytes."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise BadRequest(f"size {show(text)} is not a byte count like 4096, 4KiB or 1MiB")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_UNITS[unit]


def format_size(size: int) -> str:
    for unit, name in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{name}"
    return f"{size}B"


@dataclass(frozen=True, slots=True)
class ValueSize:
    """The size of each value: fixed, uniform in [low, high], or low plus an exponential.

    For `exponential`, `mean` is the mean of the exponential part (basho_bench's
    exponential_bin) and `high` its cap, EXPONENTIAL_CAP_MEANS means above `low`.
    """

    kind: str
    low: int
    high: int
    mean: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "exponential"):
            raise BadRequest(f"value size kind must be fixed, uniform or exponential: {self.kind}")
        if not 0 <= self.low <= self.high <= MAX_VALUE_BYTES:
            raise BadRequest(
                f"value sizes must satisfy 0 <= {self.low} <= {self.high} <= {MAX_VALUE_BYTES}"
            )
        if self.kind == "fixed" and self.low != self.high:
            raise BadRequest("a fixed value size has one size")
        if self.kind == "exponential" and self.mean < 1:
            raise BadRequest("an exponential value size needs a mean of at least 1 byte")

    @classmethod
    def parse(cls, text: str) -> ValueSize:
        """`4KiB` (fixed), `uniform:1KiB:64KiB` or `exponential:MIN:MEAN`."""
        kind, _, rest = text.partition(":")
        if not rest:
            size = parse_size(text)
            return cls("fixed", size, size)
        parts = rest.split(":")
        if kind not in ("uniform", "exponential") or len(parts) != 2:
            raise BadRequest(
                f"value size {show(text)} is not SIZE, uniform:MIN:MAX or exponential:MIN:MEAN"
            )
        low, second = (parse_size(part) for part in parts)
        if kind == "uniform":
            return cls("uniform", low, second)
        return cls("exponential", low, low + EXPONENTIAL_CAP_MEANS * second, second)

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return self.low
        if self.kind == "uniform":
            return rng.randint(self.low, self.high)
        return min(self.high, self.low + int(rng.expovariate(1 / self.mean)))

    def describe(self) -> str:
        if self.kind == "fixed":
            return format_size(self.low)
        if self.kind == "uniform":
            return f"uniform:{format_size(self.low)}:{format_size(self.high)}"
        return f"exponential:{format_size(self.low)}:{format_size(self.mean)}"


@dataclass(frozen=True, slots=True)
class Target:
    """A node's base URL: http://HOST:PORT."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http":
            raise BadRequest(f"target {show(url)} must be an http:// URL (TLS is not supported)")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise BadRequest(f"target {show(url)} must be only http://HOST:PORT")
        try:
            port = parts.port
        except ValueError:
            raise BadRequest(f"target {show(url)} has a bad port") from None
        if not parts.hostname:
            raise BadRequest(f"target {show(url)} names no host")
        return cls(parts.hostname, port or 80)

    @property
    def url(self) -> str:
        return f"http://{self.host_header}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def is_loopback(self) -> bool:
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a name other than localhost: where it points is not ours to trust


def parse_mix(text: str) -> tuple[tuple[str, int], ...]:
    """`get=3,put=1` -> ((get, 3), (put, 1)): operations and their relative weights."""
    mix: dict[str, int] = {}
    for item in text.split(","):
        op, equals, weight = item.strip().partition("=")
        if op not in OPERATIONS or not equals or not weight.isdigit():
            raise BadRequest(
                f"mix item {show(item)} is not OP=WEIGHT with OP one of {', '.join(OPERATIONS)}"
            )
        if op in mix:
            raise BadRequest(f"mix names {op} twice")
        mix[op] = int(weight)
    return tuple(mix.items())


def _check_query(name: str, value: str) -> None:
    if not name or not re.fullmatch(r"[a-z_]+", name):
        raise BadRequest(f"query parameter name {show(name)} must be lowercase letters or _")
    if name in QUORUM_OPTIONS and value not in QUORUM_WORDS and not value.isdigit():
        raise BadRequest(
            f"quorum parameter {name}={show(value)} must be a count or one of "
            + ", ".join(sorted(QUORUM_WORDS))
        )


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One run; the constructor refuses anything invalid, unbounded or (unless
    `allow_remote`) aimed off this machine."""

    targets: tuple[Target, ...]
    mix: tuple[tuple[str, int], ...] = (("get", 1),)
    value_size: ValueSize = ValueSize("fixed", 4096, 4096)
    keys: int = 10_000
    key_distribution: str = "uniform"
    bucket: str = "bench"
    concurrency: int = 16
    duration_s: float | None = None
    operations: int | None = None
    query: tuple[tuple[str, str], ...] = ()  # sent with every key request (r, w, ...)
    prefill: bool = False  # PUT every key once before the measured run
    bucket_props: str | None = None  # JSON object sent to PUT /buckets/B/props first
    timeout_s: float = DEFAULT_TIMEOUT_S
    seed: int = 1
    label: str = ""
    allow_remote: bool = False

    def __post_init__(self) -> None:
        if not self.targets:
            raise BadRequest("at least one target URL is needed")
        remote = [t.url for t in self.targets if not t.is_loopback()]
        if remote and not self.allow_remote:
            raise BadRequest(
                f"refusing non-loopback target(s) {', '.join(remote)}: pass --allow-remote"
                " to load a machine other than this one"
            )
        if self.duration_s is None and self.operations is None:
            raise BadRequest("a run must be bounded: give a duration, an operation count or both")
        if self.duration_s is not None and not 0 < self.duration_s < float("inf"):
            raise BadRequest(f"duration must be a positive number of seconds: {self.duration_s}")
        if self.operations is not None and self.operations < 1:
            raise BadRequest(f"operation count must be at least 1: {self.operations}")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise BadRequest(f"concurrency must be from 1 to {MAX_CONCURRENCY}")
        if not 1 <= self.keys <= MAX_KEYS:
            raise BadRequest(f"the key space must hold from 1 to {MAX_KEYS} keys")
        if self.key_distribution not in KEY_DISTRIBUTIONS:
            raise BadRequest(f"key distribution must be one of {', '.join(KEY_DISTRIBUTIONS)}")
        if not self.mix or any(op not in OPERATIONS or w < 0 for op, w in self.mix):
            raise BadRequest("the operation mix needs known operations with weights >= 0")
        if sum(weight for _, weight in self.mix) < 1:
            raise BadRequest("the operation mix needs at least one positive weight")
        if not self.bucket:
            raise BadRequest("the bucket name is empty")
        if not 0 < self.timeout_s < float("inf"):
            raise BadRequest(f"the request timeout must be positive: {self.timeout_s}")
        for name, value in self.query:
            _check_query(name, value)
        if self.bucket_props is not None:
            try:
                props = json.loads(self.bucket_props)
            except ValueError as exc:
                raise BadRequest(f"bucket props are not JSON: {exc}") from None
            if not isinstance(props, dict):
                raise BadRequest('bucket props must be a JSON object such as {"n_val": 3}')

    @property
    def operation(self) -> str:
        active = [op for op, weight in self.mix if weight > 0]
        return active[0] if len(active) == 1 else "mixed"

    def key_name(self, index: int) -> str:
        return f"k{index:0{len(str(self.keys - 1))}d}"

    def to_json(self) -> dict[str, Any]:
        return {
            "targets": [target.url for target in self.targets],
            "operation": self.operation,
            "mix": dict(self.mix),
            "value_size": self.value_size.describe(),
            "keys": self.keys,
            "key_distribution": self.key_distribution,
            "bucket": self.bucket,
            "concurrency": self.concurrency,
            "duration_s": self.duration_s,
            "operations": self.operations,
            "query": dict(self.query),
            "prefill": self.prefill,
            "bucket_props": None if self.bucket_props is None else json.loads(self.bucket_props),
            "timeout_s": self.timeout_s,
            "seed": self.seed,
        }


class KeyPicker:
    """Draws key indexes; `sequential` walks the key space in order across all workers."""

    def __init__(self, keys: int, distribution: str) -> None:
        self.keys = keys
        self.distribution = distribution
        self._next = 0
        self._pareto_scale = max(1, int(keys * PARETO_MEAN_FRACTION)) * (PARETO_SHAPE - 1)

    def pick(self, rng: random.Random) -> int:
        if self.distribution == "uniform":
            return rng.randrange(self.keys)
        if self.distribution == "pareto":
            # basho_bench's pareto generator; the tail wraps round instead of piling on the
            # last key, which would make one hot key no workload has.
            uniform = 1.0 - rng.random()
            return int((uniform ** (-1 / PARETO_SHAPE) - 1) * self._pareto_scale) % self.keys
        index = self._next
        self._next = (index + 1) % self.keys
        return index


class ValueSource:
    """Value bodies: slices of one random buffer at random offsets (no copy per value)."""

    def __init__(self, size: ValueSize, seed: int) -> None:
        self.size = size
        self._buffer = memoryview(random.Random(seed).randbytes(size.high + SOURCE_SLACK_BYTES))

    def value(self, rng: random.Random) -> memoryview:
        length = self.size.sample(rng)
        offset = rng.randrange(len(self._buffer) - length + 1)
        return self._buffer[offset : offset + length]
