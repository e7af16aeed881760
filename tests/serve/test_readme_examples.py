"""The README's `vlmoe serve` examples run as written against real servers: the chat client,
the images client and the detect `curl`, each with the port of its `vlmoe serve` line replaced
by the test server's (tiny models stand in for the tour's runs)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.serve.conftest import png_bytes, uvicorn_server

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SERVE = README[README.index("**Serve a model.**") : README.index("**Generate images.**")]


def _examples() -> list[tuple[str, str]]:
    """(kind, code) of the section's clients: python blocks and `curl` lines."""
    out = [("python", code) for code in re.findall(r"```python\n(.*?)```", SERVE, flags=re.S)]
    for block in re.findall(r"```bash\n(.*?)```", SERVE, flags=re.S):
        out += [("bash", line) for line in block.splitlines() if line.startswith("curl ")]
    return out


def _served_runs() -> dict[str, str]:
    """port -> the run directory its `vlmoe serve` line serves."""
    runs = {}
    for line in re.findall(r"^vlmoe serve .*$", SERVE, flags=re.M):
        port = re.search(r"--port (\d+)", line)
        runs[port.group(1) if port else "8000"] = line.split()[2]
    return runs


@pytest.fixture(scope="module")
def servers(decoder_dir, dit_dir, det_dir):
    """A server per README port, serving a tiny model of the same kind under the run's name."""
    from vlmoe.serve import build_app

    kinds = {"runs/cap": decoder_dir, "runs/digits": dit_dir, "runs/det": det_dir}
    runs = _served_runs()
    assert set(runs.values()) == set(kinds), runs
    with contextlib.ExitStack() as stack:
        urls = {
            port: stack.enter_context(
                uvicorn_server(build_app(kinds[run], model_name=run.split("/")[1]))
            )
            for port, run in runs.items()
        }
        yield urls


def test_the_readme_serve_examples_run(servers, tmp_path, monkeypatch, capsys):
    examples = _examples()
    assert [k for k, _ in examples] == ["python", "python", "bash"]
    (tmp_path / "my-data" / "images").mkdir(parents=True)
    (tmp_path / "my-data" / "images" / "000000.png").write_bytes(png_bytes(0, 32))
    monkeypatch.chdir(tmp_path)
    outputs = []
    for kind, code in examples:
        for port, url in servers.items():
            code = code.replace(f"http://127.0.0.1:{port}", url)
        if kind == "python":  # in this process: the openai client is imported already
            exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
            outputs.append(capsys.readouterr().out)
            continue
        done = subprocess.run(["bash", "-c", code], text=True, capture_output=True, timeout=120)
        assert done.returncode == 0, f"{code}\n{done.stderr[-2000:]}"
        outputs.append(done.stdout)
    for i in range(4):  # the images example's files
        with Image.open(tmp_path / f"three-{i}.png") as im:
            assert im.format == "PNG"
    detected = json.loads(outputs[2])
    assert set(detected) == {"model", "width", "height", "boxes", "routing"}
    assert detected["model"] == "det" and (detected["width"], detected["height"]) == (32, 32)
