"""The transformer's feed-forward layer in three forms: dense, top-1 gated experts, random routing.

    vit     Dense            one MLP (Dosovitskiy et al., 2021)
    moe     Top1MoE          a learned router sends each token to one of E MLPs, with the Switch
                             Transformer's load-balancing loss (Fedus et al., 2022)
    random  RandomRouting    each token goes to a random one of E MLPs while training; for inference
                             the experts' weights are averaged into one MLP (AdaMix, Wang et al., 2022),
                             so inference costs what the dense layer costs

Every form maps ``x [B, N, D]`` to ``(y [B, N, D], aux)`` where ``aux`` is a scalar auxiliary loss
(zero except for ``moe``). Experts run on the tokens routed to them only, so a token costs one MLP
in every form.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class MLP(nn.Module):
    """Linear -> GELU -> Linear, the ViT's feed-forward network (and each expert)."""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., D] -> [..., D]
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


def dispatch(x: torch.Tensor, expert: torch.Tensor, experts: nn.ModuleList) -> torch.Tensor:
    """Run each token through its expert: x [T, D], expert long [T] -> [T, D].

    Tokens are sorted by expert so each expert runs once on a contiguous slice. An expert that gets
    no token runs on an empty slice: it still joins the autograd graph and gets a zero gradient, so
    DDP sees every parameter used (no ``find_unused_parameters``).
    """
    order = expert.argsort()  # [T]
    counts = torch.bincount(expert, minlength=len(experts)).tolist()
    slices = x.index_select(0, order).split(counts)  # E x [T_e, D]
    y = torch.cat([mlp(part) for mlp, part in zip(experts, slices)])  # [T, D], sorted by expert
    return torch.empty_like(y).index_copy(0, order, y)  # back to token order


def load_balancing_loss(probs: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's auxiliary loss (Fedus et al., 2022, eq. 4): ``E * sum_i f_i * P_i``.

    probs [T, E] router probabilities; expert long [T] the chosen experts. ``f_i`` is the fraction
    of tokens sent to expert i (no gradient), ``P_i`` the mean probability given to it. It equals 1
    when routing is uniform, where its gradient with respect to the router vanishes, and grows to E
    when every token goes to one expert with certainty.
    """
    n_experts = probs.shape[-1]
    fraction = torch.bincount(expert, minlength=n_experts).to(probs.dtype) / expert.numel()  # [E]
    return n_experts * (fraction * probs.mean(dim=0)).sum()


class Dense(nn.Module):
    """The plain ViT feed-forward: one MLP, no auxiliary loss."""

    def __init__(self, d_model: int, hidden: int, n_experts: int = 1, dropout: float = 0.0):
        super().__init__()
        self.mlp = MLP(d_model, hidden, dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # x [B, N, D]
        return self.mlp(x), x.new_zeros(())

    def inference_parameters(self) -> int:
        return _numel(self)


class Top1MoE(nn.Module):
    """Switch-style mixture of experts: a linear router, top-1 routing, gate-scaled expert output.

    ``y = p_e(x) * MLP_e(x)`` with ``e = argmax p(x)``, ``p = softmax(W_r x + b_r)``; scaling by the
    gate probability is what lets the router learn. Departure from Switch: no expert capacity, so no
    token is dropped (experts run one after another on one device; there is nothing to balance but
    the loss). Experts are initialised independently.
    """

    def __init__(self, d_model: int, hidden: int, n_experts: int, dropout: float = 0.0):
        super().__init__()
        self.router = nn.Linear(d_model, n_experts)
        self.experts = nn.ModuleList(MLP(d_model, hidden, dropout) for _ in range(n_experts))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, D] -> router probabilities [T, E] (fp32) and the chosen expert per token [T]."""
        probs = F.softmax(self.router(x).float(), dim=-1)
        return probs, probs.argmax(dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # x [B, N, D]
        flat = x.reshape(-1, x.shape[-1])  # [T, D]
        probs, expert = self.route(flat)
        gate = probs.gather(1, expert[:, None]).to(x.dtype)  # [T, 1]
        y = dispatch(flat, expert, self.experts) * gate
        return y.view_as(x), load_balancing_loss(probs, expert)

    def inference_parameters(self) -> int:
        """What one token uses: the router and one expert."""
        return sum(p.numel() for p in self.router.parameters()) + _numel(self.experts[0])


class RandomRouting(nn.Module):
    """AdaMix-style experts: random top-1 routing for training, one averaged MLP for inference.

    All experts start from the same weights (averaging independently initialised MLPs would mix
    unrelated hidden units); random routing then lets them drift apart on different tokens, and
    inference uses ``MLP(x; mean_e theta_e)``, which adds no parameters or compute over the dense
    layer. AdaMix routes per batch; here each token draws its own expert (as in the study this
    experiment redoes).
    """

    def __init__(self, d_model: int, hidden: int, n_experts: int, dropout: float = 0.0):
        super().__init__()
        first = MLP(d_model, hidden, dropout)
        self.experts = nn.ModuleList(copy.deepcopy(first) for _ in range(n_experts))

    def averaged_state(self) -> dict[str, torch.Tensor]:
        """The experts' parameters averaged: a state dict of one :class:`MLP`."""
        names = [name for name, _ in self.experts[0].named_parameters()]
        return {name: torch.stack([dict(e.named_parameters())[name] for e in self.experts]).mean(dim=0)
                for name in names}

    def merged(self) -> MLP:
        """A standalone MLP holding the averaged weights (for export to a dense ViT)."""
        mlp = copy.deepcopy(self.experts[0])
        mlp.load_state_dict({k: v.detach() for k, v in self.averaged_state().items()})
        return mlp

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # x [B, N, D]
        if not self.training:
            return functional_call(self.experts[0], self.averaged_state(), (x,)), x.new_zeros(())
        flat = x.reshape(-1, x.shape[-1])  # [T, D]
        expert = torch.randint(len(self.experts), (flat.shape[0],), device=x.device)
        return dispatch(flat, expert, self.experts).view_as(x), x.new_zeros(())

    def inference_parameters(self) -> int:
        """The averaged MLP: exactly the dense layer's count."""
        return _numel(self.experts[0])


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


FEEDFORWARDS: dict[str, type[nn.Module]] = {"vit": Dense, "moe": Top1MoE, "random": RandomRouting}


def make_feedforward(variant: str, d_model: int, hidden: int, n_experts: int,
                     dropout: float = 0.0) -> nn.Module:
    if variant not in FEEDFORWARDS:
        raise ValueError(f"unknown variant '{variant}'; choices: {', '.join(FEEDFORWARDS)}")
    return FEEDFORWARDS[variant](d_model, hidden, n_experts, dropout)
