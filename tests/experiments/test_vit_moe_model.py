"""ViT, top-1 MoE and random routing: parameter counts, expert averaging, routing, balance loss."""
import dataclasses

import pytest
import torch

from experiments.vit_moe.config import ModelConfig
from experiments.vit_moe.data import ImageSpec
from experiments.vit_moe.model import ViT
from experiments.vit_moe.moe import (
    MLP,
    RandomRouting,
    Top1MoE,
    dispatch,
    load_balancing_loss,
    make_feedforward,
)
from trajectory.configutil import ConfigError

SPEC = ImageSpec(channels=1, height=16, width=16, n_classes=4)
TINY = ModelConfig(patch_size=4, d_model=16, n_layers=2, n_heads=2, d_ff=24, n_experts=3)


def tiny(variant: str, seed: int = 0, **changes) -> ViT:
    torch.manual_seed(seed)
    return ViT(dataclasses.replace(TINY, variant=variant, **changes), SPEC)


def perturb(model: torch.nn.Module, scale: float = 0.2) -> None:
    """Make every parameter (and so every expert) different, as after training."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def images(batch: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(batch, SPEC.channels, SPEC.height, SPEC.width, generator=gen)  # [B, C, H, W]


def mlp_size(d: int, h: int) -> int:
    return d * h + h + h * d + d


def test_parameter_counts_follow_the_pattern_of_the_study():
    dense, moe, rand = (tiny(v).num_parameters() for v in ("vit", "moe", "random"))
    L, D, H, E = TINY.n_layers, TINY.d_model, TINY.d_ff, TINY.n_experts
    router = D * E + E
    assert moe == dense + L * ((E - 1) * mlp_size(D, H) + router)  # all experts are stored
    assert rand == dense + L * (E - 1) * mlp_size(D, H)  # ... and no router
    assert tiny("vit").inference_parameters() == dense
    assert tiny("moe").inference_parameters() == dense + L * router  # one expert + router per token
    assert tiny("random").inference_parameters() == dense  # averaged: nothing over the ViT
    assert tiny("random").to_dense().num_parameters() == dense


def test_study_sized_models_reproduce_its_parameter_deltas():
    # The study (d_model 300, 12 layers, 4 experts, CIFAR-10 32x32, patch 4) reports ViT 12,798,490,
    # ViT-MoE 12,812,938 (+14,448 = 12 x a 300 -> 4 router with bias) and random routing 12,798,490.
    cfg = ModelConfig(patch_size=4, d_model=300, n_layers=12, n_heads=4, n_experts=4)
    with torch.device("meta"):  # sizes only, no memory
        counts = {v: ViT(dataclasses.replace(cfg, variant=v), ImageSpec(3, 32, 32, 10)).inference_parameters()
                  for v in ("vit", "moe", "random")}
    assert counts["moe"] - counts["vit"] == 12_812_938 - 12_798_490 == 14_448
    assert counts["random"] == counts["vit"]


def test_averaged_experts_are_the_mean_of_the_experts_weights():
    layer = RandomRouting(d_model=8, hidden=12, n_experts=4)
    perturb(layer)
    merged = layer.merged()
    for name, param in merged.named_parameters():
        stacked = torch.stack([dict(e.named_parameters())[name] for e in layer.experts])  # [E, ...]
        torch.testing.assert_close(param, stacked.mean(dim=0), rtol=0, atol=0)
    x = torch.randn(3, 5, 8)
    layer.eval()
    y, aux = layer(x)
    torch.testing.assert_close(y, merged(x), rtol=0, atol=1e-6)
    assert aux.item() == 0
    by_hand = torch.nn.functional.linear(  # MLP(x; mean of the experts' weights), written out
        torch.nn.functional.gelu(torch.nn.functional.linear(
            x, torch.stack([e.fc1.weight for e in layer.experts]).mean(0),
            torch.stack([e.fc1.bias for e in layer.experts]).mean(0))),
        torch.stack([e.fc2.weight for e in layer.experts]).mean(0),
        torch.stack([e.fc2.bias for e in layer.experts]).mean(0))
    torch.testing.assert_close(y, by_hand, rtol=0, atol=1e-5)


def test_random_routing_model_in_eval_equals_a_dense_vit_with_the_averaged_weights():
    model = tiny("random")
    perturb(model)
    model.eval()
    dense = ViT(dataclasses.replace(TINY, variant="vit"), SPEC).eval()
    dense.load_state_dict(model.dense_state_dict())  # strict: same keys and shapes as a plain ViT
    x = images()
    torch.testing.assert_close(model(x)[0], dense(x)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(model.to_dense()(x)[0], dense(x)[0], rtol=0, atol=0)
    model.train()  # training draws routes: outputs differ from the averaged model
    assert not torch.allclose(model(x)[0], dense(x)[0], atol=1e-3)


def test_random_routing_experts_start_equal_and_each_token_uses_one_of_them():
    layer = RandomRouting(d_model=8, hidden=12, n_experts=3)
    for expert in layer.experts[1:]:
        for a, b in zip(expert.parameters(), layer.experts[0].parameters()):
            assert torch.equal(a, b)
    perturb(layer)
    x = torch.randn(2, 40, 8)
    y, _ = layer.train()(x)
    candidates = torch.stack([expert(x) for expert in layer.experts])  # [E, B, N, D]
    matches = (candidates - y).abs().amax(dim=-1) < 1e-5  # [E, B, N]
    assert (matches.sum(dim=0) == 1).all()  # every token matches exactly one expert
    assert (matches.flatten(1).sum(dim=1) > 0).all()  # and every expert gets tokens


def test_top1_moe_routes_each_token_to_exactly_one_expert_and_trains_the_router():
    torch.manual_seed(0)
    layer = Top1MoE(d_model=8, hidden=12, n_experts=4)
    perturb(layer, scale=1.0)
    x = torch.randn(3, 10, 8)
    y, aux = layer(x)
    probs, expert = layer.route(x.reshape(-1, 8))
    assert probs.shape == (30, 4) and expert.shape == (30,)
    gate = probs.max(dim=-1).values[:, None]
    candidates = torch.stack([e(x.reshape(-1, 8)) * gate for e in layer.experts])  # [E, T, D]
    matches = (candidates - y.reshape(-1, 8)).abs().amax(dim=-1) < 1e-5  # [E, T]
    assert (matches.sum(dim=0) == 1).all() and torch.equal(matches.float().argmax(dim=0), expert)
    assert len(expert.unique()) > 1
    (y.square().sum() + aux).backward()
    assert layer.router.weight.grad.abs().sum() > 0  # through the gate value and the balance loss
    y2, _ = layer(x)
    layer.router.zero_grad()
    y2.square().sum().backward()
    assert layer.router.weight.grad.abs().sum() > 0  # the task loss alone reaches the router


def test_load_balancing_loss_is_minimal_for_uniform_routing():
    E, T = 4, 64
    expert = torch.arange(T) % E
    uniform = torch.full((T, E), 1 / E)
    assert load_balancing_loss(uniform, expert).item() == pytest.approx(1.0)
    # Hard routing (probability 1 on the chosen expert): loss = E * sum_i f_i^2 >= 1, equality iff uniform.
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        skewed = torch.multinomial(torch.rand(E, generator=gen), T, replacement=True, generator=gen)
        loss = load_balancing_loss(torch.nn.functional.one_hot(skewed, E).float(), skewed)
        counts = torch.bincount(skewed, minlength=E)
        assert loss.item() >= 1.0 - 1e-6
        assert (loss.item() > 1.0 + 1e-3) == bool((counts != T // E).any())
    collapsed = torch.zeros(T, dtype=torch.long)
    assert load_balancing_loss(torch.nn.functional.one_hot(collapsed, E).float(), collapsed).item() == E
    # Uniform routing is a stationary point: the loss's gradient w.r.t. the router logits vanishes.
    logits = torch.zeros(T, E, requires_grad=True)
    load_balancing_loss(logits.softmax(-1), expert).backward()
    assert logits.grad.abs().max().item() < 1e-7


def test_an_expert_without_tokens_still_gets_a_gradient():
    experts = torch.nn.ModuleList(MLP(4, 6) for _ in range(3))
    x = torch.randn(5, 4)
    dispatch(x, torch.zeros(5, dtype=torch.long), experts).sum().backward()  # all to expert 0
    assert experts[0].fc1.weight.grad.abs().sum() > 0
    for idle in experts[1:]:  # present and zero: DDP sees every parameter used
        assert all(p.grad is not None and not p.grad.any() for p in idle.parameters())


def test_dense_export_and_configuration_errors():
    with pytest.raises(ValueError, match="no dense equivalent"):
        tiny("moe").dense_state_dict()
    with pytest.raises(ValueError, match="choices: vit, moe, random"):
        make_feedforward("sparse", 8, 16, 2)
    with pytest.raises(ConfigError, match="patch_size=5 must divide"):
        tiny("vit", patch_size=5)
    with pytest.raises(ConfigError, match="model.variant must be one of"):
        ModelConfig(variant="dense")
    logits, aux = tiny("moe")(images(3))
    assert logits.shape == (3, SPEC.n_classes) and aux.shape == () and aux.item() >= 1.0 - 1e-6
