"""Generate text from a trained language model with its core's step form.

    python -m experiments.lm.sample checkpoint=runs/lm/shakespeare-char-gpt prompt="ROMEO:" max_new_tokens=300

The prompt is fed as one chunk, then one token per step (GPT: a K/V cache; RetNet, S5, SimpleRNN: a
recurrent state; Hyena: cached activations, which cover at most the model's max_len tokens).
"""
from __future__ import annotations

import dataclasses
import sys

import torch

from experiments.lm.checkpoint import load_lm_checkpoint
from experiments.lm.config import SampleConfig
from experiments.lm.model import generate
from trajectory.cli import run
from trajectory.configutil import ConfigError

EXAMPLES = """
python -m experiments.lm.sample checkpoint=runs/lm/shakespeare-char-gpt
python -m experiments.lm.sample checkpoint=runs/lm/shakespeare-char-s5 prompt="KING:" temperature=0.6 top_k=20
"""


def sample(cfg: SampleConfig) -> list[str]:
    if not cfg.checkpoint:
        raise ConfigError("pass checkpoint=<run directory> (e.g. runs/lm/shakespeare-char-gpt)")
    ckpt = load_lm_checkpoint(cfg.checkpoint, cfg.device)
    try:
        ids = ckpt.tokenizer.encode(cfg.prompt)
    except ValueError as err:
        raise ConfigError(f"cannot encode the prompt: {err}") from None
    if not ids:
        raise ConfigError("the prompt is empty; pass prompt=<some text>")
    new_tokens = cfg.max_new_tokens
    if ckpt.config.model.core == "hyena":  # its step cache spans the filter length only
        new_tokens = min(new_tokens, ckpt.model.max_len - len(ids))
        if new_tokens <= 0:
            raise ConfigError(f"hyena models read at most {ckpt.model.max_len} tokens; shorten the prompt")
    prompt = torch.tensor([ids] * cfg.num_samples, device=cfg.device)  # [N, P]
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    out = generate(ckpt.model, prompt, new_tokens, cfg.temperature, cfg.top_k, gen)
    return [cfg.prompt + ckpt.tokenizer.decode(row.tolist()) for row in out]


def _print_samples(cfg: SampleConfig) -> None:
    for i, text in enumerate(sample(cfg)):
        if cfg.num_samples > 1:
            print(f"--- sample {i}")
        print(text)


def prompt_argv(argv: list[str]) -> tuple[list[str], str | None]:
    """Take ``prompt=...`` out of the arguments verbatim: YAML would read ``KING: hi`` as a mapping.
    A literal ``\\n`` in it becomes a newline."""
    rest, prompt = [], None
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key in ("prompt", "--prompt") and sep:
            prompt = value.replace("\\n", "\n")
        else:
            rest.append(arg)
    return rest, prompt


def main(argv=None) -> int:
    argv, prompt = prompt_argv(list(sys.argv[1:] if argv is None else argv))

    def job(cfg: SampleConfig) -> None:
        _print_samples(dataclasses.replace(cfg, prompt=prompt) if prompt is not None else cfg)
    return run(SampleConfig, argv, __doc__.strip().splitlines()[0], EXAMPLES, job)


if __name__ == "__main__":
    sys.exit(main())
