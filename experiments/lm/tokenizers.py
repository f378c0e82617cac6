"""Tokenizers made here, saved as JSON: characters, and a byte-level BPE trained on the training text.

* :class:`CharTokenizer`: one id per character of the corpus's alphabet (all three splits, so every
  evaluated character has an id; an alphabet is not learned from the targets' statistics).
* :class:`ByteBPE`: byte-pair encoding over UTF-8 bytes (Sennrich et al., 2016; byte-level as in
  GPT-2, Radford et al., 2019). Text is first cut into pre-tokens (a word with its leading space,
  a number, a run of punctuation, whitespace) by :data:`PRETOKEN`, merges never cross a pre-token,
  and 256 byte ids plus one id per merge make the vocabulary. Any text round-trips exactly.

Training counts each distinct pre-token once with its frequency and keeps pair counts up to date
incrementally (only the words that contain the merged pair are touched), with a lazy max-heap of
pairs; ties go to the smallest pair, so training is deterministic.
"""
from __future__ import annotations

import heapq
import json
import os
import re
from collections import Counter, defaultdict

from trajectory.configutil import ConfigError
from trajectory.io import save_json

# contractions | letters (with one leading space) | digits | other symbols | trailing / other spaces.
# Every character falls in one class, so the pre-tokens always concatenate back to the text.
PRETOKEN = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in this model's alphabet") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class ByteBPE:
    kind = "byte_bpe"

    def __init__(self, merges: list[tuple[int, int]]):
        self.merges = [tuple(m) for m in merges]
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.pieces = [bytes([b]) for b in range(256)]
        for a, b in self.merges:
            self.pieces.append(self.pieces[a] + self.pieces[b])
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges)

    @classmethod
    def train(cls, text: str, vocab_size: int) -> ByteBPE:
        """Learn ``vocab_size - 256`` merges from ``text``."""
        counts = Counter(PRETOKEN.findall(text))
        words = [list(w.encode("utf-8")) for w in counts]
        freq = list(counts.values())
        pair_count: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for i, symbols in enumerate(words):
            for pair in zip(symbols, symbols[1:]):
                pair_count[pair] += freq[i]
                where[pair].add(i)
        heap = [(-c, pair) for pair, c in pair_count.items()]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        while len(merges) < vocab_size - 256 and heap:
            neg, pair = heapq.heappop(heap)
            if pair_count.get(pair, 0) != -neg or -neg <= 0:
                continue  # stale entry: the count changed since it was pushed
            new_id = 256 + len(merges)
            merges.append(pair)
            touched = set()
            for i in where.pop(pair):
                old = words[i]
                new = _merge(old, pair, new_id)
                if len(new) == len(old):
                    continue  # the word lost this pair to an earlier merge
                for p in zip(old, old[1:]):
                    pair_count[p] -= freq[i]
                    touched.add(p)
                for p in zip(new, new[1:]):
                    pair_count[p] += freq[i]
                    where[p].add(i)
                    touched.add(p)
                words[i] = new
            pair_count.pop(pair, None)
            for p in touched:
                if pair_count.get(p, 0) > 0:
                    heapq.heappush(heap, (-pair_count[p], p))
        return cls(merges)

    def _encode_word(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            ids = list(word.encode("utf-8"))
            while len(ids) > 1:
                pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, len(self.ranks)))
                if pair not in self.ranks:
                    break
                ids = _merge(ids, pair, 256 + self.ranks[pair])
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for word in PRETOKEN.findall(text):
            out.extend(self._encode_word(word))
        return out

    def decode(self, ids) -> str:
        """Ids -> text; a sequence cut inside a multi-byte character shows U+FFFD there."""
        return b"".join(self.pieces[int(i)] for i in ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "merges": [list(m) for m in self.merges]}


def _merge(symbols: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` (left to right) by ``new_id``."""
    out, i, n = [], 0, len(symbols)
    while i < n:
        if i + 1 < n and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


Tokenizer = CharTokenizer | ByteBPE


def build_tokenizer(kind: str, train_text: str, all_text: str, bpe_vocab_size: int) -> Tokenizer:
    """``char``: the alphabet of ``all_text``; ``bpe``: merges learned on ``train_text`` only."""
    if kind == "char":
        return CharTokenizer.train(all_text)
    return ByteBPE.train(train_text, bpe_vocab_size)


def save_tokenizer(tokenizer: Tokenizer, path: str) -> None:
    save_json(tokenizer.to_dict(), path, indent=0)


def load_tokenizer(path: str) -> Tokenizer:
    if not os.path.isfile(path):
        raise ConfigError(f"no tokenizer at '{path}'; the checkpoint folder is incomplete")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data.get("kind") == CharTokenizer.kind:
        return CharTokenizer(data["chars"])
    if data.get("kind") == ByteBPE.kind:
        return ByteBPE([tuple(m) for m in data["merges"]])
    raise ConfigError(f"'{path}' is not a tokenizer file (kind={data.get('kind')!r})")
