"""The coordinator's counters and latency samples, and their names in Riak's /stats."""

from __future__ import annotations

from dataclasses import dataclass, field

STAT_SAMPLES = 2048  # latency samples kept per operation for mean/median/95/99/100


@dataclass(slots=True)
class CoordinatorStats:
    """Counters since start; the HTTP layer turns them into Riak's stat names."""

    gets: int = 0
    puts: int = 0
    deletes: int = 0
    read_repairs: int = 0
    quorum_failures: int = 0
    chunk_fallbacks: int = 0
    chunk_repairs: int = 0
    uploads_waited: int = 0  # large values that waited for an upload turn (uploads_in_flight)
    get_times_us: list[int] = field(default_factory=list)
    put_times_us: list[int] = field(default_factory=list)
    sibling_counts: list[int] = field(default_factory=list)

    def record(self, samples: list[int], value: int) -> None:
        samples.append(value)
        if len(samples) > STAT_SAMPLES:
            del samples[: len(samples) - STAT_SAMPLES]

    def riak_view(self) -> dict[str, int]:
        """Riak's stat names for what we count (times in microseconds, as Riak's)."""
        view = {
            "node_gets": self.gets,
            "node_gets_total": self.gets,
            "node_puts": self.puts,
            "node_puts_total": self.puts,
            "read_repairs": self.read_repairs,
            "read_repairs_total": self.read_repairs,
            "ringstore_deletes_total": self.deletes,
            "ringstore_quorum_failures_total": self.quorum_failures,
            "ringstore_chunk_fallbacks_total": self.chunk_fallbacks,
            "ringstore_chunk_repairs_total": self.chunk_repairs,
            "ringstore_uploads_waited_total": self.uploads_waited,
        }
        for prefix, samples in (
            ("node_get_fsm_time", self.get_times_us),
            ("node_put_fsm_time", self.put_times_us),
            ("node_get_fsm_siblings", self.sibling_counts),
        ):
            view.update(_distribution(prefix, samples))
        return view


def _distribution(prefix: str, samples: list[int]) -> dict[str, int]:
    ordered = sorted(samples)
    if not ordered:
        return {f"{prefix}_{name}": 0 for name in ("mean", "median", "95", "99", "100")}

    def at(fraction: float) -> int:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return {
        f"{prefix}_mean": sum(ordered) // len(ordered),
        f"{prefix}_median": at(0.5),
        f"{prefix}_95": at(0.95),
        f"{prefix}_99": at(0.99),
        f"{prefix}_100": ordered[-1],
    }
