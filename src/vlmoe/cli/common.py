"""What every subcommand shares: logging set-up and turning errors into one line on stderr.

A subcommand is a module with `add_arguments(parser)` and `run(args) -> int`; `main(argv)` of
each module (and `vlmoe.cli.main.main`) parses, runs and maps every expected failure (bad
config, missing or corrupt file, mismatched checkpoint, bad data) to `error: <message>` on
stderr and exit code 2 (1 for a failed run, 130 for Ctrl-C). `--debug` (or VLMOE_DEBUG=1)
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

log = logging.getLogger("vlmoe.cli")

EXIT_USAGE = 2
EXIT_FAILED = 1


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code `code`."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "bad input", whichever package raises them."""
    from vlmoe.config import ConfigError

    types: list[type[BaseException]] = [
        CLIError,
        ConfigError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
    ]
    for module, name in (
        ("vlmoe.train.checkpoint", "CheckpointError"),
        ("vlmoe.train.trainer", "TrainingError"),
        ("vlmoe.models.checkpoint", "CheckpointError"),
        ("vlmoe.data.errors", "DataError"),
        ("vlmoe.distributed.mesh", "DistributedError"),
    ):
        try:
            mod = __import__(module, fromlist=[name])
            types.append(getattr(mod, name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if (
        isinstance(e, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError)
        and e.filename
    ):
        text = f"{e.strerror or type(e).__name__}: {e.filename}"
    return " ".join(text.split())  # one line, whatever the message held


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (tests and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Library logs go to stderr as plain messages. By default: warnings, plus the trainer's
    progress lines; -v: everything at INFO; -vv: DEBUG; -q: warnings only."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("vlmoe").setLevel(level)
    progress = logging.WARNING if quiet else min(level, logging.INFO)
    logging.getLogger("vlmoe.train.trainer").setLevel(progress)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def run_guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call `run(args)`; expected errors become one stderr line and a non-zero exit code."""
    debug = getattr(args, "debug", False) or os.environ.get("VLMOE_DEBUG") == "1"
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vlmoe ... | head`: the reader left, which is not an error
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except _expected_errors() as e:
        if debug:
            traceback.print_exc()
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return getattr(e, "code", EXIT_USAGE) if isinstance(e, CLIError) else EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - a CLI never shows a traceback unasked
        if debug:
            traceback.print_exc()
        print(
            f"error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def command_main(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
    epilog: str | None = None,
) -> int:
    """Parse `argv` for one subcommand and run it guarded. argparse errors exit with code 2."""
    parser = make_parser(prog, description, add_arguments, epilog)
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return int(e.code or 0)
    return run_guarded(run, args)


def make_parser(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    epilog: str | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    add_common_flags(parser)
    return parser


def check_file(path: str, what: str, suffixes: tuple[str, ...] = ()) -> str:
    """A readable file of the expected kind, or CLIError naming it."""
    import pathlib

    p = pathlib.Path(path)
    if not p.exists():
        raise CLIError(f"{what} not found: {path}")
    if p.is_dir():
        raise CLIError(f"{what} is a directory, expected a file: {path}")
    if suffixes and p.suffix.lower() not in suffixes:
        got = p.suffix or "no extension"
        raise CLIError(f"{what} {path}: expected a {'/'.join(suffixes)} file, got {got!r}")
    return path
