"""The import-linter contract in pyproject.toml: the layers of DESIGN.md hold."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    """import-linter's command on the package under `src`, with this repository's contract."""
    code = (
        "import sys; from importlinter.cli import lint_imports_command;"
        " sys.exit(lint_imports_command())"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PYTHONPATH": str(src), "PATH": ""},
        timeout=300,
    )


def test_layers_contract_holds(tmp_path):
    # lint-imports reads the installed package; run it on this checkout's src/.
    out = lint_imports(ROOT / "src", tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract can fail: a copy of the package where `data` imports `tasks` breaks it."""
    import shutil

    pkg = tmp_path / "src" / "vlmoe"
    shutil.copytree(ROOT / "src" / "vlmoe", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with open(pkg / "data" / "order.py", "a") as f:
        f.write("\nimport vlmoe.tasks  # noqa\n")
    out = lint_imports(tmp_path / "src", tmp_path)
    assert out.returncode != 0 and "vlmoe.data.order -> vlmoe.tasks" in out.stdout
