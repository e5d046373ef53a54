"""bench/scaling.py's pure parts: options, summaries, paired and calibrated ratios, verdicts and
the RESULTS.md section. No cluster here: the samples are made up, so every verdict is known."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench.scaling import build_parser, key_name, main, plan_from_args
from bench.scaling_report import (
    FULL_KEYS,
    FULL_OPERATIONS,
    FULL_ROUNDS,
    QUICK_KEYS,
    QUICK_OPERATIONS,
    QUICK_ROUNDS,
    ListSample,
    OpSample,
    Plan,
    PooledSample,
    RunInfo,
    Spread,
    Verdict,
    format_section,
    paired_ratios,
    summarize,
    verdicts,
)
from ringstore.errors import BadRequest

K = 1000
PLAN = Plan(keys=K, rounds=3, operations=50)
INFO = RunInfo(
    started=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
    command=".venv/bin/python -m bench.scaling --keys 1000",
    machine="a CPU, nproc 2",
    commit="abc123",
    load_before="1.00 1.00 1.00",
    load_after="2.00 2.00 2.00",
    elapsed_s=42.0,
    fill_rates=(("A 0 to 500", 300.0), ("B 0 to 1,000", 310.0)),
)


def plan_of(*argv: str) -> Plan:
    return plan_from_args(build_parser().parse_args(list(argv)))


def ops(phase: str, op: str, a_rates: list[float], b_rates: list[float]) -> list[OpSample]:
    """Rounds 1, 2, ... of each cluster."""
    return [
        OpSample(phase, cluster, n, op, 100, 0, rate)
        for cluster, rates in (("A", a_rates), ("B", b_rates))
        for n, rate in enumerate(rates, 1)
    ]


def pooled(phase: str, cluster: str, op: str, p50_ms: float, p99_ms: float) -> PooledSample:
    return PooledSample(phase, cluster, op, 300, 0, 3.0, p50_ms, p99_ms)


def lists(phase: str, a: tuple[float, int], b: tuple[float, int], rounds: int = 3) -> list:
    """Each cluster lists `keys` keys in `seconds`, every round."""
    return [
        ListSample(phase, cluster, n, seconds, keys, keys)
        for cluster, (seconds, keys) in (("A", a), ("B", b))
        for n in range(1, rounds + 1)
    ]


def rows_of(samples_ops: list[OpSample], samples_lists: list[ListSample]) -> dict[str, Verdict]:
    """get, put, list (K -> 2K) and half-list (K/2 -> K) verdicts."""
    rows = verdicts(PLAN, samples_ops, samples_lists)
    return dict(zip(("get", "put", "list", "half-list"), rows, strict=True))


def test_defaults_quick_and_overrides() -> None:
    full = plan_of()
    assert (full.keys, full.rounds, full.operations, full.concurrency, full.quick) == (
        FULL_KEYS,
        FULL_ROUNDS,
        FULL_OPERATIONS,
        16,
        False,
    )
    quick = plan_of("--quick")
    assert (quick.keys, quick.rounds, quick.operations, quick.quick) == (
        QUICK_KEYS,
        QUICK_ROUNDS,
        QUICK_OPERATIONS,
        True,
    )
    chosen = plan_of("--quick", "--keys", "1000", "--rounds", "2", "--operations", "50", "-c", "4")
    assert (chosen.keys, chosen.rounds, chosen.operations, chosen.concurrency) == (1000, 2, 50, 4)
    assert chosen.fresh_keys == 200  # two measured phases of 2 rounds of 50 PUTs


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--keys", "1001"], "even"),
        (["--keys", "10"], "at least"),
        (["--rounds", "0"], "--rounds"),
        (["--operations", "5"], "--operations"),
        (["-c", "0"], "--concurrency"),
        # 2 phases x 3 rounds x 100 PUTs would grow the 1,000-key cluster A past 1,500
        (["--keys", "1000", "--rounds", "3", "--operations", "100"], "more than K/2"),
    ],
)
def test_bad_options_are_refused(argv: list[str], words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        plan_of(*argv)


def test_the_command_line_refuses_bad_options_before_starting_anything(capsys, tmp_path) -> None:
    results = tmp_path / "RESULTS.md"
    with pytest.raises(SystemExit):
        main(["--keys", "7", "--results", str(results)])
    assert "--keys must be an even number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--results", str(tmp_path / "missing" / "RESULTS.md")])
    assert "is not a directory" in capsys.readouterr().err
    assert not results.exists()


def test_summaries_take_medians_and_spreads() -> None:
    measured = ops("same", "get", [300, 100, 200], [1, 1, 1]) + ops("same", "put", [50, 70, 60], [])
    pools = [pooled("same", "A", "get", 20.0, 80.0), pooled("same", "B", "get", 1.0, 2.0)]
    pools.append(pooled("doubled", "A", "put", 3.0, 4.0))
    listed = lists("same", (0.2, 1000), (0.1, 1000))
    listed.append(ListSample("same", "A", 4, 0.2, 990, 1000))  # this listing missed 10 keys
    a = summarize("same", "A", measured, pools, listed)
    assert a.get_rate == Spread(200, 100, 300) and a.put_rate == Spread(60, 50, 70)
    assert (a.get_p50_ms, a.get_p99_ms, a.put_p50_ms, a.put_p99_ms) == (20.0, 80.0, None, None)
    assert a.list_seconds == Spread(0.2, 0.2, 0.2)
    assert a.keys_listed == Spread(1000, 990, 1000) and a.keys_missing == 10
    b = summarize("same", "B", measured, pools, listed)
    assert b.get_rate == Spread(1, 1, 1) and b.get_p99_ms == 2.0
    empty = summarize("doubled", "B", measured, pools, listed)
    assert empty.get_rate is None and empty.list_seconds is None and empty.keys_missing == 0


def test_ratios_pair_rounds_by_number() -> None:
    per_round = {("A", 1): 100.0, ("B", 1): 90.0, ("A", 2): 50.0, ("B", 2): 50.0, ("A", 3): 8.0}
    assert paired_ratios(per_round, "same") == [0.9, 1.0]  # round 3 has no B turn
    assert paired_ratios({("A", 1): 0.0, ("B", 1): 5.0}, "same") == []  # nothing to divide by


def test_rate_verdicts_divide_out_the_clusters_own_difference() -> None:
    # B is 5% faster than A when both hold K; with 2K it is 2% slower: calibrated 0.98/1.05.
    # Round 2 ran while the machine was busy: both clusters slowed, their ratio did not.
    samples = ops("same", "get", [100, 50, 100], [105, 52.5, 105])
    samples += ops("doubled", "get", [100, 50, 100], [98, 49, 98])
    samples += ops("same", "put", [100] * 3, [100] * 3)
    samples += ops("doubled", "put", [100] * 3, [80, 95, 70])
    rows = rows_of(samples, [])
    get = rows["get"]
    assert get.doubled.median == pytest.approx(0.98) and get.same.median == pytest.approx(1.05)
    assert get.calibrated == pytest.approx(0.98 / 1.05) and get.word == "met"
    assert get.what == "4 KiB GET ops/s, 2,000 keys / 1,000" and get.needed == ">= 0.90"
    put = rows["put"]
    assert put.calibrated == pytest.approx(0.80)
    assert put.word == "**missed** (some rounds meet it: noise?)"  # round 2's 0.95
    slow = ops("same", "put", [100] * 3, [100] * 3) + ops("doubled", "put", [100] * 3, [50] * 3)
    assert rows_of(slow, [])["put"].word == "**missed**"
    edge = ops("same", "get", [100] * 3, [100] * 3) + ops("doubled", "get", [100] * 3, [90] * 3)
    assert rows_of(edge, [])["get"].met  # exactly 0.9 is still met
    uncalibrated = rows_of(ops("doubled", "get", [100], [100]), [])["get"]
    assert uncalibrated.calibrated is None and uncalibrated.word == "not measured"


def test_list_verdicts_compare_time_per_key_scaled_to_a_doubling() -> None:
    samples = lists("same", (0.1, 1000), (0.1, 1000))
    samples += lists("half", (0.05, 500), (0.1, 1000))
    # B listed 2,500 keys (PUTs added 500 to its 2,000) in 0.25 s: as linear as can be.
    samples += lists("doubled", (0.1, 1000), (0.25, 2500))
    rows = rows_of([], samples)
    assert rows["list"].calibrated == pytest.approx(2.0) and rows["list"].met
    assert rows["half-list"].calibrated == pytest.approx(2.0) and rows["half-list"].met
    assert rows["list"].needed == "1.6 .. 2.5"
    assert rows["list"].what == "list-keys time, 2,000 keys / 1,000 (per key, x2)"
    assert rows["half-list"].what == "list-keys time, 1,000 keys / 500 (per key, x2)"
    quadratic = lists("same", (0.1, 1000), (0.1, 1000)) + lists("doubled", (0.1, 1000), (0.4, 2000))
    row = rows_of([], quadratic)["list"]
    assert row.calibrated == pytest.approx(4.0) and row.word == "**missed**"
    constant = lists("same", (0.1, 1000), (0.1, 1000)) + lists("doubled", (0.1, 1000), (0.1, 2000))
    assert not rows_of([], constant)["list"].met  # 1.0: flat is not linear either


def test_the_section_shows_every_phase_and_verdict() -> None:
    samples = ops("same", "get", [100] * 3, [100] * 3) + ops("doubled", "get", [100] * 3, [80] * 3)
    samples += ops("same", "put", [50] * 3, [50] * 3) + ops("doubled", "put", [50] * 3, [50] * 3)
    listed = lists("half", (0.05, 500), (0.1, 1000)) + lists("same", (0.1, 1000), (0.1, 1000))
    listed += lists("doubled", (0.1, 1000), (0.2, 2000))
    listed[-5] = ListSample("doubled", "A", 2, 0.0995, 995, 1000)  # as fast per key
    pools = [pooled("doubled", "B", "get", 20.0, 80.0)]
    text = format_section(PLAN, INFO, samples, pools, listed)
    assert text.startswith("## 2026-01-02 03:04 UTC: scaling with the key count\n")
    assert "quick" not in text
    assert "`.venv/bin/python -m bench.scaling --keys 1000` (42 s in all)" in text
    assert "load average before 1.00 1.00 1.00, after 2.00 2.00 2.00" in text
    assert "nproc 2" in text and "abc123" in text
    assert "A 0 to 500 at 300 PUTs/s; B 0 to 1,000 at 310 PUTs/s" in text
    assert (
        "| half | A | 500 (500..500) | - | - | - | - | - | - | 0 | 0.050 (0.050..0.050) |" in text
    )
    assert "| doubled | B | 2,000 (2,000..2,000) | 80.0 (80.0..80.0) | 20.00 | 80.00 |" in text
    assert "| 0; a listing missed 5 |" in text  # A's list in doubled round 2 (below)
    assert (
        "| 4 KiB GET ops/s, 2,000 keys / 1,000 | 0.800 (0.800..0.800) | 1.000 (1.000..1.000)"
        " | 0.800 | >= 0.90 | **missed** |"
    ) in text
    assert "| 4 KiB PUT ops/s, 2,000 keys / 1,000 | 1.000 (1.000..1.000) |" in text
    assert "| list-keys time, 2,000 keys / 1,000 (per key, x2) | 2.000 (2.000..2.000) |" in text
    assert "| list-keys time, 1,000 keys / 500 (per key, x2) | 2.000 (2.000..2.000) |" in text
    quick = format_section(Plan(keys=K, rounds=3, operations=10, quick=True), INFO, [], [], [])
    assert "(quick smoke run: not a measurement)" in quick
    assert quick.count("| not measured |") == 4


def test_key_names_keep_their_width() -> None:
    assert key_name(7) == "s000000007"
    assert len({len(key_name(i)) for i in (0, 9_999, 10_000, 40_000, 999_999_999)}) == 1
