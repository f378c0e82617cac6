"""Registry of sequence cores: config name -> class. A new core is one file and one line here."""
from __future__ import annotations

from typing import Any

from trajectory.configutil import ConfigError, from_dict
from trajectory.models.cores.base import CoreConfig, ResetsUnsupported, SequenceCore
from trajectory.models.cores.gpt import GPTCore
from trajectory.models.cores.hyena import HyenaCore
from trajectory.models.cores.retnet import RetNetCore
from trajectory.models.cores.s5 import S5Core

CORES: dict[str, type[SequenceCore]] = {
    "gpt": GPTCore,
    "hyena": HyenaCore,
    "retnet": RetNetCore,
    "s5": S5Core,
}


def build_core(name: str, cfg: CoreConfig, options: dict[str, Any] | None = None,
               registry: dict[str, type[SequenceCore]] | None = None) -> SequenceCore:
    """Instantiate the core called ``name``; ``options`` are checked against its ``Options``.
    ``registry`` lets a subpackage offer more cores than ``CORES`` (default)."""
    registry = CORES if registry is None else registry
    options = check_core_config(name, options, registry)  # first: an unknown name is a ConfigError
    return registry[name](cfg, options)


def check_core_config(name: str, options: dict[str, Any] | None = None,
                      registry: dict[str, type[SequenceCore]] | None = None) -> Any:
    """The checks of :func:`build_core` without building anything (run them before long work);
    returns the core's parsed ``Options``."""
    registry = CORES if registry is None else registry
    if name not in registry:
        raise ConfigError(f"unknown core '{name}'; choose one of: {', '.join(registry)}")
    return from_dict(registry[name].Options, dict(options or {}), origin=f"model.core_options for '{name}'")


__all__ = ["CORES", "check_core_config", "CoreConfig", "ResetsUnsupported", "SequenceCore", "build_core"]
