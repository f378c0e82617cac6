"""Typed configuration loading: dataclass schema <- YAML file <- command-line overrides.

Every entry point (train, eval, profile, the behaviour-policy trainer, the experiments) parses its
arguments with :func:`parse_cli` and gets back an instance of its schema dataclass. Two argument
styles are accepted side by side, as in the trajectory-transformer projects users know:

    --config=configs/eval_base.yaml --device=cpu --seed=42 beam_width=32 model.n_layers=2

``--key=value`` and ``key=value`` mean the same thing; ``--config`` names a YAML file merged first.
A typo, a wrong type or a missing file raises :class:`ConfigError` with one message that names the
key and the valid choices. A value outside its range does too: each config dataclass declares the
interval of every numeric field in a ``ranges`` table that its ``__post_init__`` checks with
:func:`check_ranges` (so a config built in code is checked as one read from the command line).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
from typing import Any, Mapping, Sequence, Type, TypeVar, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message says how."""


_INTERVAL = re.compile(r"^([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])$")


@dataclasses.dataclass(frozen=True)
class Interval:
    """The valid values of a numeric setting, written as in mathematics: ``[1, inf)``, ``(0, 1]``."""

    text: str
    why: str = ""  # what the bounds protect, for the message

    def bounds(self) -> tuple[float, float, bool, bool]:
        """(low, high, low included, high included)."""
        match = _INTERVAL.match(self.text)
        if match is None:
            raise ValueError(f"not an interval: '{self.text}' (write e.g. '[1, inf)' or '(0, 1]')")
        opening, low, high, closing = match.groups()
        return float(low), float(high), opening == "[", closing == "]"

    def __contains__(self, value: float) -> bool:
        low, high, low_in, high_in = self.bounds()
        above = value >= low if low_in else value > low
        below = value <= high if high_in else value < high
        return bool(above and below)  # NaN is in no interval

    def describe(self) -> str:
        low, high, low_in, high_in = self.bounds()
        if math.isinf(high) and not high_in:
            if math.isinf(low):
                phrase = "a finite number"
            else:
                phrase = f"at least {low:g}" if low_in else f"above {low:g}"
        else:
            phrase = f"in {self.text}"
        return f"{phrase} ({self.why})" if self.why else phrase


# a ``ranges`` table: field name -> "[low, high]" (or (interval, why) to say what the bounds protect)
Ranges = Mapping[str, Union[str, tuple[str, str]]]


def check_ranges(config: Any, section: str = "") -> None:
    """Each numeric field of ``config`` that ``type(config).ranges`` names must lie in its interval
    (None passes: it means "off"; each element of a list or tuple is checked); else one
    :class:`ConfigError` naming the key (``section.field``), the valid range and the value."""
    for name, spec in type(config).ranges.items():
        interval = Interval(*spec) if isinstance(spec, tuple) else Interval(spec)
        value = getattr(config, name)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        key = f"{section}.{name}" if section else name
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in values):
            raise ConfigError(f"{key} must be a number, got {value!r}")  # e.g. a string from Python code
        bad = [v for v in values if v is not None and v not in interval]
        if bad:
            each = " (each)" if isinstance(value, (list, tuple)) else ""
            raise ConfigError(f"{key} must be {interval.describe()}{each}, got {value}")


def load_object(path: str) -> Any:
    """The object an import path ``"package.module:Name"`` names (registries name classes this way,
    so that checking a config never imports what the classes need, e.g. torch)."""
    import importlib
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if dataclasses.is_dataclass(node):
        for field in dataclasses.fields(node):
            value = getattr(node, field.name)
            name = f"{prefix}{field.name}"
            if dataclasses.is_dataclass(value):
                keys.extend(_valid_keys(value, name + "."))
            else:
                keys.append(name)
    return keys


def _explain_key_error(schema: Any, bad_key: str, origin: str) -> ConfigError:
    valid = _valid_keys(schema)
    close = difflib.get_close_matches(bad_key, valid, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    if bad_key in getattr(type(schema), "retired_keys", ()):
        hint = " It was removed: measured no better than the default (docs/results.md)."
    return ConfigError(
        f"unknown config key '{bad_key}' (from {origin}).{hint}\nValid keys: {', '.join(valid)}"
    )


def _flatten_keys(container: Any, prefix: str = "") -> list[str]:
    if not isinstance(container, dict):
        return [prefix[:-1]]
    keys = []
    for key, value in container.items():
        if isinstance(value, dict):
            keys.extend(_flatten_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _merge(base: DictConfig, other: DictConfig, schema: Any, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except ConfigKeyError:
        # Find which key is unknown, to name it exactly.
        plain = OmegaConf.to_container(other, resolve=False)
        valid = set(_valid_keys(schema))
        sections = {k.rsplit(".", 1)[0] for k in valid if "." in k}
        for key in _flatten_keys(plain):
            if key not in valid and key not in sections:
                raise _explain_key_error(schema, key, origin) from None
        raise
    except ValidationError as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(
            f"wrong type for config key '{key}' (from {origin}): {err.msg.splitlines()[0]}"
        ) from None


def load_yaml(path: str) -> DictConfig:
    """Read a YAML config file; missing or unreadable files raise :class:`ConfigError`."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: '{path}'. Pass --config=<path to a .yaml file>, "
                          f"e.g. one under configs/.")
    try:
        loaded = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, Exception) as err:  # yaml errors are not OmegaConf's
        raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values")
    return loaded


def split_argv(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Split CLI arguments into the --config path and a dot-list of overrides."""
    config_path = None
    dotlist: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            arg = arg[2:]
            if "=" not in arg:  # "--key value"
                if i + 1 >= len(args):
                    raise ConfigError(f"option --{arg} needs a value: --{arg}=<value>")
                arg = f"{arg}={args[i + 1]}"
                i += 1
        if "=" not in arg:
            raise ConfigError(f"cannot read argument '{args[i]}': expected key=value or --key=value")
        key, value = arg.split("=", 1)
        key = key.replace("-", "_")
        if key == "config":
            config_path = value
        else:
            dotlist.append(f"{key}={value}")
        i += 1
    return config_path, dotlist


def build_config(schema_cls: Type[T], config_path: str | None = None,
                 overrides: Sequence[str] = ()) -> T:
    """Schema defaults <- YAML file <- dot-list overrides, validated, as a schema instance."""
    schema = schema_cls()
    merged = OmegaConf.structured(schema)
    if config_path is not None:
        loaded = load_yaml(config_path)
        if getattr(schema_cls, "retired_keys", ()):
            loaded = OmegaConf.create(without_retired_keys(schema_cls, OmegaConf.to_container(loaded)))
        merged = _merge(merged, loaded, schema, f"file '{config_path}'")
    if overrides:
        try:
            cli = OmegaConf.from_dotlist(list(overrides))
        except OmegaConfBaseException as err:
            raise ConfigError(f"cannot parse overrides {list(overrides)}: {err}") from None
        merged = _merge(merged, cli, schema, "the command line")
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid configuration: {err}") from None


def parse_cli(schema_cls: Type[T], argv: Sequence[str]) -> T:
    config_path, dotlist = split_argv(argv)
    return build_config(schema_cls, config_path, dotlist)


def to_yaml(config: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: Any) -> dict:
    """Plain nested dict (safe for ``torch.save`` with ``weights_only`` loading and for JSON)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore


def without_retired_keys(schema_cls: type, data: dict) -> dict:
    """``data`` without the keys the schema lists in ``retired_keys`` (dotted paths of settings that
    were removed), so that configs saved before a removal still load."""
    retired = getattr(schema_cls, "retired_keys", ())
    if not retired:
        return data
    data = copy.deepcopy(data)
    for dotted in retired:
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return data


def from_dict(schema_cls: Type[T], data: dict, origin: str = "a saved config") -> T:
    schema = schema_cls()
    data = without_retired_keys(schema_cls, data)
    merged = _merge(OmegaConf.structured(schema), OmegaConf.create(data), schema, origin)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
