"""CI executes the evaluation notebook so it never rots (and never writes into the repo)."""
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_dataset
from training.data import datasets_dir

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "evaluation.ipynb"
DATASETS = datasets_dir()


def _repo_files() -> set[str]:
    """Tracked and untracked-but-not-ignored files: what a stray write would add to."""
    out = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--cached"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


@pytest.mark.slow
def test_evaluation_notebook_runs_and_shows_the_curves(tmp_path):
    require_dataset(DATASETS / "routerbench_subset")
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    before = _repo_files()
    env_out = tmp_path / "out"
    os.environ["OPENCLAW_NOTEBOOK_OUT"] = str(env_out)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        os.environ.pop("OPENCLAW_NOTEBOOK_OUT", None)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook shows no plot"
    assert (env_out / "summary.json").exists() and (env_out / "decisions.parquet").exists()
    # Other jobs may add files to the tree meanwhile; what this notebook would write is named here.
    new = _repo_files() - before
    ours = {"summary.json", "cost_quality.png", "decisions.parquet", "mlflow.db"}
    strays = [p for p in new if p.startswith("notebooks/") or "/" not in p or Path(p).name in ours]
    assert not strays, f"the notebook wrote into the repository: {strays}"
