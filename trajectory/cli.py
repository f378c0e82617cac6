"""Shared plumbing of the command-line entry points: help, config parsing, clean errors."""
from __future__ import annotations

import sys
import textwrap
from typing import Callable, Sequence, Type, TypeVar

from trajectory.configutil import ConfigError, parse_cli, to_yaml

T = TypeVar("T")


def help_text(schema_cls: Type, description: str, examples: str) -> str:
    defaults = textwrap.indent(to_yaml(schema_cls()), "  ")
    return (f"{description}\n\nUsage:\n{textwrap.indent(examples.strip(), '  ')}\n\n"
            f"Arguments are --config=<file.yaml> and overrides as key=value or --key=value\n"
            f"(nested keys with dots: model.n_layers=2). Keys and defaults:\n{defaults}")


def run(schema_cls: Type[T], argv: Sequence[str] | None, description: str, examples: str,
        job: Callable[[T], object]) -> int:
    """Parse ``argv`` into ``schema_cls`` and run ``job``; config errors, while parsing or raised by
    the job (e.g. a setting that only the data shows to be wrong), exit with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        print(help_text(schema_cls, description, examples))
        return 0
    try:
        job(parse_cli(schema_cls, argv))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
