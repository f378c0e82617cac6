"""Registry of sequence cores: config name -> the core's options and its class.

A new core is one file (its ``SequenceCore`` subclass), its ``Options`` dataclass in
:mod:`trajectory.models.cores.options`, and one line in :data:`CORE_CATALOG`. The catalog names classes
by import path, so checking a config (:func:`check_core_config`) never imports torch: a mistyped core
or option is reported in a fraction of a second, before any data, model or environment work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trajectory.configutil import ConfigError, from_dict, load_object
from trajectory.models.cores import options as _options


@dataclass(frozen=True)
class CoreEntry:
    options: type  # the core's Options dataclass (torch-free)
    implementation: str  # "module:Class" of its SequenceCore subclass, imported when built

    def load(self) -> type:
        return load_object(self.implementation)


CORE_CATALOG: dict[str, CoreEntry] = {
    "gpt": CoreEntry(_options.GPTOptions, "trajectory.models.cores.gpt:GPTCore"),
    "hyena": CoreEntry(_options.HyenaOptions, "trajectory.models.cores.hyena:HyenaCore"),
    "retnet": CoreEntry(_options.RetNetOptions, "trajectory.models.cores.retnet:RetNetCore"),
    "s5": CoreEntry(_options.S5Options, "trajectory.models.cores.s5:S5Core"),
}


def check_core_config(name: str, options: dict[str, Any] | None = None,
                      catalog: dict[str, CoreEntry] | None = None) -> Any:
    """The checks of :func:`build_core` without building anything or importing torch (run them
    before long work); returns the core's parsed ``Options``. ``catalog`` lets a subpackage offer
    more cores than :data:`CORE_CATALOG` (default)."""
    catalog = CORE_CATALOG if catalog is None else catalog
    if name not in catalog:
        raise ConfigError(f"unknown core '{name}'; choose one of: {', '.join(catalog)}")
    return from_dict(catalog[name].options, dict(options or {}),
                     origin=f"model.core_options for '{name}'")


def build_core(name: str, cfg, options: dict[str, Any] | None = None,
               catalog: dict[str, CoreEntry] | None = None):
    """Instantiate the core called ``name`` (a :class:`SequenceCore`) with ``cfg`` (a
    :class:`CoreConfig`); ``options`` are checked against its ``Options`` first."""
    catalog = CORE_CATALOG if catalog is None else catalog
    parsed = check_core_config(name, options, catalog)  # first: an unknown name is a ConfigError
    return catalog[name].load()(cfg, parsed)


_FROM_BASE = ("CoreConfig", "ResetsUnsupported", "SequenceCore")


def __getattr__(name: str) -> Any:
    # the torch-side names load on first use, so importing this registry stays torch-free
    if name == "CORES":
        return {core: entry.load() for core, entry in CORE_CATALOG.items()}
    if name in _FROM_BASE:
        from trajectory.models.cores import base
        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CORES", "CORE_CATALOG", "CoreEntry", "check_core_config", "CoreConfig", "ResetsUnsupported",
           "SequenceCore", "build_core"]
