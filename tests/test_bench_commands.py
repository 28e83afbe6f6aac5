"""The benchmark scripts' own code paths, run small on the example data, so that a change to what
they call breaks a test rather than, sessions later, the command docs/BENCHMARKS.md quotes
(`bench/bench_generalisation.py --online` had stopped running when `simulate`'s predictions began
to take a loaded router)."""
from __future__ import annotations

from pathlib import Path

from tests.samples import example_outcomes_as_routerbench

ROOT = Path(__file__).resolve().parent.parent


def test_the_generalisation_benchs_online_replay_runs_on_the_shipped_router(tmp_path):
    from bench import bench_generalisation
    from training.data import load_outcomes

    df = example_outcomes_as_routerbench()
    path = tmp_path / "held_out.parquet"
    df.to_parquet(path, index=False)
    runs = bench_generalisation.online_replay(load_outcomes(str(path)), ROOT / "models" / "default", 80, seeds=(0, 1))
    assert [r["seed"] for r in runs] == [0, 1]
    for run in runs:
        assert all(0.0 <= run[k] <= 1.0 for k in ("static", "bandit", "random"))
        assert set(run["by_task"]) <= set(df["task"]) and run["by_task"]
