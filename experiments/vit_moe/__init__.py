"""Vision Transformer with a mixture of experts and random routing (ViT vs ViT-MoE vs AdaMix-style).

    python -m experiments.vit_moe.train --config=configs/vit_moe/random.yaml
    python -m experiments.vit_moe.evaluate runs/vit_moe-random

An experiment that uses the package's plumbing (typed configs, DDP, logging, atomic writes); the
package knows nothing of it. See README.md in this folder.
"""
# The package goes first: it keeps the repository root (which holds profile.py) behind the standard
# library on sys.path before anything imports torch.
import trajectory  # noqa: F401
