"""The offline embedder: deterministic feature hashing of words and word pairs.

No model, no download, no network: each lower-cased word and each adjacent word pair is hashed
(BLAKE2b, stable across processes, unlike ``hash()``) to two dimensions, each with a sign,
weighted by ``1 + log(count)``, and the vector is L2-normalised. Cosine similarity between two such vectors
is honest lexical overlap: texts sharing words score higher, and word pairs reward shared
phrases. It is not semantic, and says so in the docs; set ``OPENAI_API_KEY`` for that.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter

from core import metrics

_WORD = re.compile(r"[\w][\w'-]*", re.UNICODE)
_STOP = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was "
    "were will with we you i".split()
)


def features(text: str) -> Counter[str]:
    words = [w for w in (m.group().lower() for m in _WORD.finditer(text)) if w not in _STOP]
    counts: Counter[str] = Counter(words)
    counts.update(f"{a} {b}" for a, b in zip(words, words[1:], strict=False))
    return counts


#: Buckets each feature is hashed into. With one, a colliding feature of the opposite sign can
#: cancel a word out entirely; with two independent ones, both must collide.
HASHES = 2


def hash_vector(text: str, dimensions: int) -> list[float]:
    vector = [0.0] * dimensions
    for feature, count in features(text).items():
        digest = hashlib.blake2b(feature.encode(), digest_size=8 * HASHES).digest()
        weight = (1.0 + math.log(count)) / math.sqrt(HASHES)
        # Word pairs weigh a little less than words: phrases refine, words decide.
        if " " in feature:
            weight *= 0.7
        for h in range(HASHES):
            part = digest[8 * h : 8 * h + 8]
            bucket = int.from_bytes(part[:6], "little") % dimensions
            vector[bucket] += weight if part[7] & 1 else -weight
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0:
        # An empty or stop-word-only text still needs a valid (non-zero) vector.
        vector[0] = 1.0
        return vector
    return [v / norm for v in vector]


class OfflineEmbedder:
    model = "offline-hashing-v2"

    def __init__(self, dimensions: int = 1536) -> None:
        self.dimensions = dimensions
        self.requests = 0

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        self.requests += 1
        with metrics.timed(metrics.EMBEDDING, backend="offline"):
            return [hash_vector(text, self.dimensions) for text in texts]

    async def aclose(self) -> None:
        return None
