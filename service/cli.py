"""`openclaw-router` command line.

Each subcommand lives beside the job it runs, in a module exposing `configure(parser)` and
`run(args) -> int`. Those modules keep heavy imports (torch, lightgbm, mlflow, faiss)
inside `run`, so `--help` and `serve` start without paying for them.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("service.serve_command", "run the OpenAI-compatible routing gateway"),
    "check": ("service.check_command", "validate the configuration serve would start with, without starting it"),
    "train": ("training.train", "train router predictors from outcome tables, tracked in MLflow"),
    "eval": ("training.evaluate", "evaluate a router against baselines over the whole knob range"),
    "cache-eval": ("training.cache_eval", "would the cache serve text_b from text_a's answer? precision/recall"),
    "calibrate": ("training.calibrate", "the willingness to pay that sends a chosen share of prompts to one model"),
    "retrain": ("training.retrain", "retrain from the outcome log and promote only if off-policy estimates say better"),
    "simulate": ("training.simulate", "replay an outcome table as a request stream: static vs bandit router, with drift"),
    "shadow-report": ("training.shadow_report", "HTML/JSON report comparing the shadow router with the live one"),
}


def _version() -> str:
    try:
        return version("openclaw-router")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openclaw-router", description="ML-driven LLM router")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"openclaw-router {_version()}")
    # -v after the subcommand as well. Its default is SUPPRESS: argparse copies every attribute the
    # subparser sets over the top-level ones, and a default False would undo `-v COMMAND`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        # Only the chosen command's module is imported; the others stay bare parsers.
        if only == name:
            importlib.import_module(module).configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Reports print "—" and "÷": a terminal or pipe that cannot show them gets "?" instead of a
    # finished job ending in an encoding error after its files were written.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    chosen = next((a for a in argv if a in COMMANDS), None)
    args = build_parser(only=chosen).parse_args(argv)
    # The one handler every log line goes through, uvicorn's too (service/serve_command.py): stdout
    # is for results, such as serve's listening line that scripts read.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # faiss reports at INFO, as a two-line traceback repr, that this CPU build has no AVX2 variant.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if getattr(args, "config", None) == "":
        # An unset shell variable (`--config "$CONFIG"`) would otherwise silently start without the file.
        print(f"openclaw-router {args.command}: error: --config: empty path", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError) as exc:
        # Validation errors and unusable paths are for the user, not a stack trace.
        print(f"openclaw-router {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        # A log larger than this machine's memory: one line saying so (numpy's says how much it
        # asked for), not a traceback.
        print(f"openclaw-router {args.command}: error: out of memory{f': {exc}' if str(exc) else ''}", file=sys.stderr)
        return 1
    except Exception as exc:
        # A database's refusal (a user without SELECT on the log's tables) is the operator's to mend:
        # one line, as for an unreachable one. Anything else is a bug and keeps its traceback.
        if (psycopg := sys.modules.get("psycopg")) is None or not isinstance(exc, psycopg.Error):
            raise
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"openclaw-router {args.command}: error: the database refused: {said}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
