"""Builds the ONNX graphs the router serves, in a child process.

Exporting needs torch and transformers. Once imported they stay in the process and cost about
1 ms per routed request (docs/BENCHMARKS.md, "Gateway overhead"), so a process that finds a
graph missing (a machine's first start) has a child build it and never imports them itself.

    python -m router.onnx_export embedder --variant int8
    python -m router.onnx_export cross-encoder --folder models/cache_verifier
"""
from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
from pathlib import Path


def build_in_child(*args: str) -> None:
    """Run this module with `args`. The exporters' console output (tracer warnings, load reports,
    quantizer notes) stays in the child; a failed build is a ValueError with its last words."""
    # The child must import this package even where the parent found it through sys.path alone
    # (a notebook, a script run from the checkout).
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "router.onnx_export", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise ValueError(lines[-1] if lines else f"ONNX export ({' '.join(args)}) failed with exit status {proc.returncode}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.onnx_export", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("embedder").add_argument("--variant", choices=("fp32", "int8"), required=True)
    sub.add_parser("cross-encoder").add_argument("--folder", type=Path, required=True)
    args = parser.parse_args(argv)

    from router.embedding import cache_dir

    # One build at a time per cache folder, across processes: two jobs started together on a
    # fresh machine would otherwise quantise the same graph at once, and onnxruntime's quantizer
    # writes and deletes a file of a fixed name beside its source. The second finds the graphs built.
    lock = os.open(cache_dir() / ".onnx-export.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if args.what == "embedder":
            from router.embedding import build_graph

            build_graph(args.variant)
        else:
            from router.cache.cross_encoder import build_graph

            build_graph(args.folder)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    finally:
        os.close(lock)  # releases the lock
    return 0


if __name__ == "__main__":
    sys.exit(main())
