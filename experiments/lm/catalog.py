"""The cores a language model can use, and their options, importable without torch: the package's
catalog plus the SimpleRNN family of this experiment. ``python -m experiments.lm.train`` checks a
config against it before importing torch."""
from __future__ import annotations

from dataclasses import dataclass

from trajectory.models.cores import CORE_CATALOG, CoreEntry


@dataclass
class SimpleRNNOptions:
    """Options of the SimpleRNN family (:mod:`experiments.lm.simple_rnn`)."""

    variant: str = "scan"  # simple | seqfirst[_cont] | fused[_cont] | kvout[_cont] | scan
    d_key: int = 0  # key / query / gate width (0: d_model)
    d_value: int = 0  # value width (0: d_model)
    gate_bias: float = 3.0  # initial forget-gate bias: sigmoid(3) = 0.95
    mlp_ratio: int = 0  # width of a GELU MLP after each recurrence, in d_model (0: none)


LM_CORE_CATALOG: dict[str, CoreEntry] = {
    **CORE_CATALOG,
    "simple_rnn": CoreEntry(SimpleRNNOptions, "experiments.lm.simple_rnn:SimpleRNNCore"),
}
