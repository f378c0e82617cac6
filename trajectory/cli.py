"""Shared plumbing of the command-line entry points: help, config parsing, ``--resume``, clean errors."""
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


def resume_argv(argv: list[str]) -> tuple[list[str], str | None]:
    """Take ``--resume <dir>`` / ``--resume=<dir>`` out of the CLI arguments."""
    out, resume = [], None
    i = 0
    while i < len(argv):
        if argv[i] == "--resume":
            if i + 1 >= len(argv):
                raise ConfigError("--resume needs a run directory: --resume runs/<name>")
            resume, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--resume="):
            resume = argv[i].split("=", 1)[1]
        else:
            out.append(argv[i])
        i += 1
    return out, resume


def run_resumable(schema_cls: Type[T], argv: Sequence[str] | None, description: str, examples: str,
                  job: Callable[[T, str | None], object], saved_config: Callable[[str], str]) -> int:
    """:func:`run` for training scripts: ``--resume <run>`` starts from the run's saved config
    (``saved_config(run)``, which raises ConfigError/ValueError naming the fix when the run cannot be
    resumed), with the command line's overrides on top, and hands the run folder to ``job``."""
    try:
        argv, resume_dir = resume_argv(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if resume_dir is not None and not any(arg.startswith("--config") for arg in argv):
        try:
            argv.insert(0, f"--config={saved_config(resume_dir)}")
        except (ConfigError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return run(schema_cls, argv, description, examples, lambda cfg: job(cfg, resume_dir))
