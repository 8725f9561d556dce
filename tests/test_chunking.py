"""The chunker (core.documents.chunk_text): natural boundaries, no mid-word cuts, no orphans.

Properties checked on generated texts (hypothesis, bounded): every chunk within the token budget,
the chunks cover the text in order (overlap aside), no chunk below the minimum unless the text is
that small, no cut inside a word that fits, the same text always gives the same chunks.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from core.documents import chunk_spans, chunk_text, estimate_tokens, min_chunk_tokens

ISSUE_TEXT = "Short intro. " + " ".join(f"word{i:04d}" for i in range(400))


def test_issue_reproduction_no_orphan_and_no_cut_word() -> None:
    """Issue 15: a short sentence before a long one became a 5-token chunk of its own, and the
    long one was cut mid-word (``word00``, ``d0037``)."""
    chunks = chunk_text(ISSUE_TEXT, 128, 16)
    assert len(chunks) > 1
    for chunk in chunks:
        assert 128 // 4 <= estimate_tokens(chunk) <= 128, chunk
        for word in chunk.split():
            assert word == "Short" or word == "intro." or re.fullmatch(r"word\d{4}", word), word
    assert chunks[0].startswith("Short intro. word0000")
    assert chunks[-1].endswith("word0399")


def test_paragraphs_that_fit_stay_whole() -> None:
    paragraphs = [f"Paragraph {i} says something short about item {i}." for i in range(6)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, 40, 0)
    for paragraph in paragraphs:
        assert any(paragraph in chunk for chunk in chunks), paragraph
    assert chunk_text(text, 512) == [text]


def test_a_word_longer_than_a_chunk_is_cut_and_nothing_is_lost() -> None:
    blob = "A" * 3000
    chunks = chunk_text(f"before {blob} after", 128, 0)
    assert all(estimate_tokens(c) <= 128 for c in chunks)
    assert "".join(chunks).replace(" ", "") == f"before{blob}after"
    assert all(estimate_tokens(c) >= 128 // 4 for c in chunks)


def test_cjk_without_spaces_splits_after_sentence_punctuation() -> None:
    sentence = "这是一个关于向量索引同步的句子。"  # 16 characters, one sentence
    text = sentence * 60
    chunks = chunk_text(text, 64, 0)
    assert "".join(chunks) == text
    assert all(c.endswith("。") for c in chunks)


def test_empty_and_blank_text_give_no_chunks() -> None:
    assert chunk_text("") == [] and chunk_text(" \n\n \t") == []


def test_counter_is_used() -> None:
    """A stricter counter (one token per UTF-8 byte) makes more, smaller chunks."""
    text = "héllo wörld " * 200

    def by_bytes(s: str) -> int:
        return len(s.encode())

    chunks = chunk_text(text, 100, 0, count=by_bytes)
    assert all(by_bytes(c) <= 100 for c in chunks)
    assert len(chunks) > len(chunk_text(text, 100, 0))


# --- properties ---------------------------------------------------------------------------

WORD = st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzé中文0123456789"), min_size=1,
               max_size=12)
SEPARATOR = st.sampled_from([" ", " ", " ", "  ", ". ", "! ", "\n", "\n\n", "\n \n", ", "])


@st.composite
def texts(draw: st.DrawFn) -> str:
    words = draw(st.lists(WORD, min_size=0, max_size=400))
    out = []
    for word in words:
        out.append(word)
        out.append(draw(SEPARATOR))
    return draw(st.sampled_from(["", " ", "\n"])) + "".join(out)


@settings(max_examples=60, deadline=None)
@given(text=texts(), max_tokens=st.integers(64, 240), overlap=st.integers(0, 60))
def test_chunk_properties(text: str, max_tokens: int, overlap: int) -> None:
    spans = chunk_spans(text, max_tokens, overlap)
    chunks = chunk_text(text, max_tokens, overlap)
    # deterministic, and the chunks are the spans' text
    assert chunks == [text[s:e] for s, e in spans] == chunk_text(text, max_tokens, overlap)
    # within budget
    assert all(estimate_tokens(c) <= max_tokens for c in chunks)
    # in order, covering every non-blank character
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(spans, spans[1:]))
    covered = [False] * len(text)
    for s, e in spans:
        covered[s:e] = [True] * (e - s)
    assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())
    # never a cut inside a word (every word here fits a chunk)
    for s, e in spans:
        assert s == 0 or text[s - 1].isspace() or text[s - 1] in ".!,", (text[s - 1 : s + 5])
        assert e == len(text) or text[e].isspace() or text[e - 1] in ".!,", (text[e - 5 : e + 1])
    # no orphan: a text split in several chunks has none below the minimum (words here are at
    # most 5 tokens, small beside the budget, so the boundaries always allow it)
    if len(chunks) > 1:
        floor = min_chunk_tokens(max_tokens)
        assert all(estimate_tokens(c) >= floor for c in chunks), [estimate_tokens(c) for c in chunks]


@settings(max_examples=25, deadline=None)
@given(text=texts(), max_tokens=st.integers(128, 400), overlap=st.integers(0, 60))
def test_chunk_properties_with_the_exact_openai_count(text: str, max_tokens: int, overlap: int) -> None:
    """The same properties when chunks are counted by cl100k_base, as with OpenAI embeddings (a
    tokenizer can count a joined text above the sum of its pieces: the budget still holds)."""
    count = _exact()
    spans = chunk_spans(text, max_tokens, overlap, count)
    chunks = [text[s:e] for s, e in spans]
    assert chunks == chunk_text(text, max_tokens, overlap, count)
    assert all(count(c) <= max_tokens for c in chunks)
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(spans, spans[1:]))
    covered = [False] * len(text)
    for s, e in spans:
        covered[s:e] = [True] * (e - s)
    assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())
    if len(chunks) > 1:
        assert all(count(c) >= min_chunk_tokens(max_tokens) for c in chunks), [count(c) for c in chunks]


def _exact() -> Callable[[str], int]:
    import openai_bpe

    encoding = openai_bpe.get_encoding("cl100k_base")
    return lambda text: openai_bpe.count_tokens(text, encoding)
