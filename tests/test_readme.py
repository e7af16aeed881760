"""Every command in the README's tour runs as written, in order, in a fresh directory (training
shortened to a few steps), so the README cannot drift from the code."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TOUR = README[README.index("## A short tour") : README.index("## Results")]
# Training shortened: a few steps on a few samples (a resume keeps its run's settings).
SHORT = "--set train.steps=2 --set train.batch_size=4 --set data.num_train=16 --set data.num_eval=4"
SHORTER = {
    "--num 500": "--num 24",
    "train.steps=500": "train.steps=2",
    "train.steps=600": "train.steps=3",
}


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", TOUR, flags=re.S)


def commands() -> list[str]:
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            # `vlmoe serve` runs until stopped: tests/serve starts it and talks to it.
            if not line.startswith("vlmoe ") or line.startswith("vlmoe serve"):
                continue
            for a, b in SHORTER.items():
                line = line.replace(a, b)
            words = shlex.split(line.split(">")[0])
            one_off = {"--resume", "--list-presets", "--print-config"} & set(words)
            if words[1] == "train" and not one_off:
                line += " " + SHORT
            out.append(line)
    return out


def test_the_tour_has_commands():
    cmds = commands()
    assert len(cmds) >= 10 and any("upcycle" in c for c in cmds)


def test_readme_tour_runs_in_order(tmp_path):
    env = {"PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    env["OMP_NUM_THREADS"] = "1"
    vlmoe = f"{shlex.quote(sys.executable)} -m vlmoe"
    for code in blocks("python"):
        if "OpenAI(" in code:  # a client of `vlmoe serve`: tests/serve/test_readme_examples.py
            continue
        # the recipe example, shortened like the commands
        code = code.replace("**recipe}", '**recipe, "train.steps": 2, "data.num_train": 16}')
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            text=True,
            capture_output=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{code}\n{done.stderr}"
    for cmd in commands():
        line = vlmoe + cmd.removeprefix("vlmoe")
        done = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600
        )
        assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert (tmp_path / "runs" / "mine" / "inspect" / "routing.png").is_file()
    assert (tmp_path / "runs" / "upcycled-tuned" / "model" / "model.safetensors").is_file()
