"""Guards on the commands docs/BENCHMARKS.md tells readers to run: the verifier job must not
rewrite the verifier the gateway serves unless asked, and the eviction bench must end below the
size at which a context switches to HNSW."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "cache_verifier"


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _pairs(tmp_path: Path) -> Path:
    # All labelled "different": were the job to run, no threshold could qualify and it would stop
    # before saving anything, so even a run of code without the guard leaves the shipped folder intact.
    path = tmp_path / "pairs.csv"
    path.write_text("text_a,text_b,label\n" + "".join(f"Is {w} good for you?,Is {w} bad for you?,0\n"
                                                      for w in ("coffee", "tea", "sugar", "salt", "milk", "rice")))
    return path


def _train_verifier(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.train_verifier", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_train_verifier_refuses_the_shipped_folder_without_overwrite(tmp_path):
    before = _digest(SHIPPED)
    pairs = _pairs(tmp_path)
    for out in ([], ["--out", str(SHIPPED)], ["--out", str(SHIPPED / ".." / "cache_verifier")]):
        run = _train_verifier("--reuse-model", "--pairs", str(pairs), *out)
        assert run.returncode == 2, run.stderr[-2000:]
        assert "shipped verifier" in run.stderr and "--overwrite" in run.stderr and "--out DIR" in run.stderr
        assert "Traceback" not in run.stderr
    assert _digest(SHIPPED) == before


def test_train_verifier_reuse_model_needs_a_model_in_out(tmp_path):
    run = _train_verifier("--reuse-model", "--pairs", str(_pairs(tmp_path)), "--out", str(tmp_path / "check"))
    assert run.returncode == 2, run.stderr[-2000:]
    assert "model.txt" in run.stderr and "cp -r" in run.stderr
    assert not (tmp_path / "check").exists()


def test_eviction_bench_ends_below_the_hnsw_size():
    from router.cache.cache import DEFAULT_HNSW_FROM

    entries = 300
    assert entries < DEFAULT_HNSW_FROM
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_cache_eviction.py"), "--entries", str(entries)],
                         cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"filled {entries} entries (flat" in run.stdout
    assert "no background rebuild" in run.stdout
    assert "lookup p50 at the end" in run.stdout


def test_eviction_bench_refuses_a_context_too_small_to_index():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_cache_eviction.py"), "--entries", "5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "--entries must be at least" in run.stderr
