"""What this CPU offers int8 planning, read from its flags (torch-free).

int8 matrix products pay only where the CPU multiplies int8 in hardware: VNNI (AVX-512 VNNI, or the
256-bit AVX-VNNI) or AMX tiles. On an AVX2-only CPU torch's int8 kernels emulate the dot products
and measured no faster than fp32 (docs/int8.md), so ``quantize=auto`` plans in fp32 there.
"""
from __future__ import annotations

import dataclasses
import platform

# flag in /proc/cpuinfo -> the name people know it by, fastest first
INT8_INSTRUCTIONS = {"amx_int8": "AMX-INT8", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI"}


@dataclasses.dataclass(frozen=True)
class CpuFeatures:
    model: str
    flags: frozenset[str]

    @property
    def int8_instructions(self) -> list[str]:
        """The int8 dot-product instructions present, fastest first (empty: none)."""
        return [name for flag, name in INT8_INSTRUCTIONS.items() if flag in self.flags]

    @property
    def isa_class(self) -> str:
        """The class int8 speed depends on: ``amx``, ``vnni``, ``avx512``, ``avx2`` or ``other``."""
        if "amx_int8" in self.flags:
            return "amx"
        if {"avx512_vnni", "avx_vnni"} & self.flags:
            return "vnni"
        if "avx512f" in self.flags:
            return "avx512"
        return "avx2" if "avx2" in self.flags else "other"

    def describe(self) -> dict:
        """For reports: the CPU, its class and its int8 instructions."""
        return {"model": self.model, "isa_class": self.isa_class,
                "int8_instructions": self.int8_instructions}


def parse_cpuinfo(text: str) -> CpuFeatures:
    """The first processor's model name and flags from the text of /proc/cpuinfo."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return CpuFeatures(model or platform.processor() or platform.machine(), flags)


def read_cpu_features(path: str = "/proc/cpuinfo") -> CpuFeatures:
    """This machine's features; on a system without /proc/cpuinfo no flags are known (class
    ``other``: int8 is then never chosen by ``quantize=auto``)."""
    try:
        with open(path) as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return CpuFeatures(platform.processor() or platform.machine(), frozenset())
