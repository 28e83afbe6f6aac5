"""A real `openclaw-router serve` subprocess, for the tests of what the command does by itself
(start-up warnings, the open-file limit, the server's own connection limits). The process is
never left behind: one that does not say it listens in time is killed, and `stop` kills one
that does not end after its signal."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MASTER = "mk-test-" + "7" * 24
LISTENING = "openclaw-router listening on http://"


def launch(config: Path, cwd: Path, env: dict[str, str], log: Path, files: tuple[int, int] | None = None,
           start_timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """`serve --config config --port 0`, its stderr in `log`; `files`: its (soft, hard) open-file
    limit at start. Returns the process and its URL once it says it listens."""
    with open(log, "w") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--config", str(config), "--port", "0"],
                                cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, files)) if files else None)
    try:
        line = _first_line(proc, start_timeout)
        assert line.startswith(LISTENING), line + log.read_text()
    except BaseException:
        stop(proc)
        raise
    return proc, line.split()[3]


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    """Its first line of stdout, read in a thread so that a process that hangs before printing
    it fails the test at `timeout` instead of blocking it."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else f"(serve said nothing on stdout within {timeout:g} s)\n"


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def start_serve(tmp_path: Path, upstream: str, server: dict, files: tuple[int, int] | None = None) -> tuple[subprocess.Popen, int]:
    """A `serve` over one OpenAI-compatible upstream (model m1, provider `fake` with timeout_s 30),
    `server` merged into its server section; its stderr in tmp_path/serve.log. Returns it and its port."""
    config = tmp_path / "openclaw.yaml"
    config.write_text(f"""
models:
  - {{name: m1, provider: fake, price: {{input_per_1m: 1, output_per_1m: 1}}, context_window: 100000}}
providers:
  fake: {{kind: openai, base_url: "{upstream}", timeout_s: 30}}
server: {json.dumps({"db": "sqlite:///outcomes.sqlite", **server})}
cache: {{enabled: false}}
""")
    env = {**os.environ, "OPENCLAW_MASTER_KEY": MASTER, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("OPENCLAW_GOVERNANCE_DB", None)
    proc, url = launch(config, tmp_path, env, tmp_path / "serve.log", files)
    return proc, int(url.rsplit(":", 1)[1])


def read_response(sock) -> tuple[bytes, bytes]:
    """One HTTP/1.1 answer read off a kept-alive socket: (its head, its body of Content-Length
    bytes), leaving the connection open for the next request."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(next(h.split(b":")[1] for h in head.lower().split(b"\r\n") if h.startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return head, body
