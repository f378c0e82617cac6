"""The language model on every core: step form equals parallel form; generation; size matching."""
import math

import pytest
import torch

from experiments.lm.config import LMModelConfig
from experiments.lm.dataset import evaluate, window_offsets
from experiments.lm.matching import matched_pair
from experiments.lm.model import LM_CORES, LanguageModel, build_lm_core, generate
from experiments.lm.tokenizers import CharTokenizer
from trajectory.configutil import ConfigError
from trajectory.models.cores import CoreConfig
from trajectory.training.distributed import DistContext

V, T, B = 23, 20, 2


def make_lm(core: str, **options) -> LanguageModel:
    torch.manual_seed(0)
    cfg = LMModelConfig(core=core, d_model=16, n_layers=2, n_heads=2, dropout=0.0,
                        embedding_dropout=0.0, core_options=options)
    return LanguageModel(cfg, V, max_len=32).eval()


@pytest.fixture(params=sorted(LM_CORES))
def core_name(request):
    return request.param


@torch.no_grad()
def test_step_logits_equal_parallel_logits(core_name):
    model = make_lm(core_name)
    tokens = torch.randint(0, V, (B, T))
    state = model.init_state(B, "cpu")
    prefix, state = model.step(tokens[:, :7], state)
    rest = [model.step(tokens[:, t:t + 1], state) for t in range(7, 8)]
    logits, state = rest[0]
    tail, _ = model.step(tokens[:, 8:], state)
    stepped = torch.cat([prefix, logits, tail], dim=1)
    torch.testing.assert_close(stepped, model(tokens), atol=1e-4, rtol=0)


@torch.no_grad()
def test_greedy_generation_follows_the_parallel_argmax(core_name):
    model = make_lm(core_name)
    prompt = torch.randint(0, V, (B, 4))
    new = generate(model, prompt, 6, temperature=0.0)
    seq = torch.cat([prompt, new], dim=1)
    expected = model(seq).argmax(-1)[:, 3:-1]  # position p predicts token p + 1
    assert torch.equal(new, expected)


def test_sampled_generation_is_reproducible_and_in_vocabulary():
    model = make_lm("s5")
    prompt = torch.zeros(3, 2, dtype=torch.long)
    a = generate(model, prompt, 15, 1.0, 5, torch.Generator().manual_seed(3))
    b = generate(model, prompt, 15, 1.0, 5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (3, 15) and 0 <= a.min() and a.max() < V


def test_tied_head_shares_the_embedding_and_counts_it_once():
    torch.manual_seed(0)
    model = LanguageModel(LMModelConfig(core="gpt", d_model=16, n_layers=1, n_heads=2, tie_embeddings=True),
                          V, max_len=32)
    assert model.head.weight is model.embedding.weight
    assert model.num_parameters() == sum(p.numel() for p in set(model.parameters()))


def test_unknown_core_and_bad_options_are_config_errors():
    cfg = CoreConfig(d_model=16, n_layers=1, n_heads=2, max_len=8)
    with pytest.raises(ConfigError, match="simple_rnn"):
        build_lm_core("lstm", cfg)
    with pytest.raises(ConfigError, match="varient"):
        build_lm_core("simple_rnn", cfg, {"varient": "scan"})


@torch.no_grad()
def test_bits_per_character_of_a_char_model_is_loss_over_ln2():
    model = make_lm("gpt")
    tok = CharTokenizer([chr(97 + i) for i in range(V)])
    tokens = torch.randint(0, V, (300,))
    out = evaluate(model, tokens, tok, seq_len=16, max_tokens=0, batch_size=4, ctx=DistContext())
    assert out["tokens"] == (299 // 16) * 16
    assert out["bpc"] == pytest.approx(out["loss"] / math.log(2), rel=1e-9)
    assert out["loss"] == pytest.approx(math.log(V), rel=0.1)  # an untrained model is near uniform


def test_window_offsets_depend_only_on_seed_and_step():
    a = window_offsets(5, 1, 1000, 16, 8)
    assert torch.equal(a, window_offsets(5, 1, 1000, 16, 8))
    assert not torch.equal(a, window_offsets(6, 1, 1000, 16, 8))
    assert a.max() < 1000 - 17


@pytest.mark.parametrize("d, ffn, heads", [(32, 64, 4), (32, 128, 2), (48, 100, 4), (768, 1024, 8)])
def test_retnet_and_transformer_parameter_counts_match_within_half_a_percent(d, ffn, heads):
    pair = matched_pair(LMModelConfig(d_model=d, n_layers=2, n_heads=heads), ffn, vocab_size=65, max_len=64)
    assert pair.gap < 0.005
    for cfg in (pair.transformer, pair.retnet):  # the counts are of models that really build
        if d <= 64:
            assert LanguageModel(cfg, 65, 64).num_parameters() in (pair.transformer_params,
                                                                  pair.retnet_params)
    assert pair.transformer_ffn % d == 0 and pair.retnet_ffn > 0
