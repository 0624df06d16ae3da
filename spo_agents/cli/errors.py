"""How the command line reports a user's mistake: one line on stderr and exit code 2.

Why: a bad flag, a missing file or a config typo is not a bug, and a 60-line traceback hides the
one line that says what to fix. So every command validates its inputs before it does any work
and raises `UserError`; `main` prints `spo-agents CMD: error: <one line>` and exits with 2 (the
code argparse uses for bad usage). A config rejected by pydantic becomes `field.path: problem`
for each field, a YAML syntax error its line and problem. Anything else is a bug and keeps its
traceback; `--debug` (or SPO_AGENTS_DEBUG=1) shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["UserError", "OneLineArgumentParser", "user_error_message", "debug_enabled"]

USAGE_EXIT_CODE = 2


class UserError(Exception):
    """A mistake in what the user asked for; the message is the whole story (one line)."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage block is one `--help` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(USAGE_EXIT_CODE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def debug_enabled(args: argparse.Namespace | None = None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("SPO_AGENTS_DEBUG", "") not in ("", "0")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _pydantic_message(exc: Any) -> str:
    """`field.path: problem (got value)` for each error of a pydantic ValidationError."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error.get("loc", ()))
        kind, message = error.get("type", ""), error.get("msg", "invalid")
        if kind == "extra_forbidden":
            message = "unknown field"
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        got = error.get("input")
        if kind not in ("extra_forbidden", "missing") and not isinstance(got, (dict, list)) and got is not None:
            message += f" (got {got!r})"
        parts.append(f"{where}: {message}" if where else message)  # no field: a rule across fields
    return "invalid config: " + "; ".join(parts)


def _yaml_message(exc: Any) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"invalid YAML{where}: {problem}"


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for a user error, None for anything that is a bug."""
    import pydantic
    import yaml

    if isinstance(exc, UserError):
        return _one_line(str(exc))
    if isinstance(exc, pydantic.ValidationError):
        return _one_line(_pydantic_message(exc))
    if isinstance(exc, yaml.YAMLError):
        return _one_line(_yaml_message(exc))
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)) and exc.filename:
        return _one_line(f"cannot use {exc.filename!s}: {exc.strerror or exc}")
    return None


def report(command: str, exc: BaseException) -> int:
    """Print a user error as one line on stderr; returns the exit code."""
    message = user_error_message(exc)
    print(f"spo-agents {command}: error: {message}", file=sys.stderr)
    return USAGE_EXIT_CODE
