"""Our BPE trainer against the slowest, most obvious implementation there is.

`_learn_merges` keeps an index of which chunk holds which pair and updates counts incrementally with a
heap - fast, and easy to get subtly wrong. The reference below recounts every pair of every chunk
after every merge (Sennrich et al. 2016, algorithm 1, as written). Both must learn the same merges,
in the same order, on any text.
"""

from __future__ import annotations

from collections import Counter

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from src.tokenizer import SPLIT_PATTERN, BPETokenizer, _count_chunks, _learn_merges

MIN_PAIR_COUNT = 2  # the trainer's documented stopping rule: a pair seen once is not worth a token


def naive_merges(chunk_counts: Counter[str], n_merges: int) -> list[tuple[int, int]]:
    words = [(list(chunk.encode("utf-8")), count) for chunk, count in chunk_counts.items()]
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[int, int]] = Counter()
        for ids, count in words:  # recount everything, every time
            for pair in zip(ids, ids[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best_count = max(pairs.values())
        if best_count < MIN_PAIR_COUNT:
            break
        best = min(pair for pair, count in pairs.items() if count == best_count)  # ties: the smaller pair
        new_id = 256 + len(merges)
        merges.append(best)
        for ids, _ in words:
            i = 0
            while i < len(ids) - 1:  # left to right, non-overlapping
                if (ids[i], ids[i + 1]) == best:
                    ids[i : i + 2] = [new_id]
                i += 1
    return merges


# Few distinct characters make many repeated pairs (and ties); a few multi-byte ones test UTF-8.
texts = st.text(alphabet=st.sampled_from("aab  bcäé\n.1"), min_size=0, max_size=300)


@settings(max_examples=150, deadline=None)
@given(texts, st.integers(min_value=0, max_value=60))
def test_learned_merges_equal_the_naive_reference(text, n_merges):
    counts = _count_chunks([text], regex.compile(SPLIT_PATTERN), ["<|endoftext|>"])
    assert _learn_merges(Counter(counts), n_merges) == naive_merges(Counter(counts), n_merges)


@settings(max_examples=40, deadline=None)
@given(st.lists(texts, min_size=1, max_size=4).filter(any))
def test_trained_tokenizer_equals_the_reference_and_round_trips(documents):
    tok = BPETokenizer.train(documents, vocab_size=320)
    counts = _count_chunks(documents, regex.compile(SPLIT_PATTERN), ["<|endoftext|>"])
    assert tok.merges == naive_merges(counts, 320 - 257)
    for doc in documents:
        assert tok.decode(tok.encode(doc)) == doc


def test_the_reference_is_not_trivial():
    """Worked by hand: 'aa' occurs 3*2 + 1 = 7 times, so it merges first ("aaab" -> [aa, a, b]); then
    (aa, a) and (a, b) both occur 3 times and the tie goes to the smaller pair, (97, 98) = 'ab'."""
    assert naive_merges(Counter({"aaab": 3, "aab": 1}), 2) == [(97, 97), (97, 98)]
