"""`vlmoe serve` from the command line: usage errors exit 2; the real command serves."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import free_port
from vlmoe.cli.main import main


def test_help(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "/v1/chat/completions" in out and "--allow-remote-images" in out
    assert "/v1/images/generations" in out and "/v1/detect" in out and "--max-images" in out


@pytest.mark.parametrize(
    "args,words",
    [
        (["serve", "/no/such/run"], "no such run"),
        (["serve", "RUN", "--port", "70000"], "65535"),
        (["serve", "RUN", "--max-queue", "0"], "must be > 0"),
        (["serve", "RUN", "--max-images", "0"], "must be > 0"),
        (["serve", "RUN", "--timeout", "soon"], "expected a number"),
    ],
)
def test_usage_errors_exit_2(args, words, decoder_dir, capsys):
    args = [str(decoder_dir) if a == "RUN" else a for a in args]
    assert main(args) == 2
    assert words in capsys.readouterr().err


def test_busy_port_is_one_line(decoder_dir, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", str(decoder_dir), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter importing torch: ~5 s idle, more on a busy machine
def test_the_command_serves(decoder_dir):
    port = free_port()
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "VLMOE_API_KEY": "k", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmoe", "serve", str(decoder_dir), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401  # the key from the environment
        models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k"}).json()
        assert models["data"][0]["id"] == "decoder-debug-moe"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "serving 'decoder-debug-moe'" in out
    assert '"path": "/v1/models"' in err and '"status": 401' in err  # the access log
