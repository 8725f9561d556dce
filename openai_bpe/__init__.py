"""OpenAI's BPE encodings (cl100k_base, o200k_base), shipped with vector-sync, for exact token counts.

``tiktoken`` (OpenAI's tokenizer) downloads its encoding files on first use, from a blob store
that a locked-down deployment (or this project's test machines) cannot reach. The two files live
here instead, gzipped, byte for byte the ones tiktoken downloads: each is checked against the
SHA-256 that tiktoken itself pins (``tiktoken_ext/openai_public.py``) before it is used. The split
pattern and special tokens below are the encodings' own definitions from that same module; the
test suite builds each encoding through tiktoken's own constructor from these files and compares.

Which models use which encoding is tiktoken's own table (``tiktoken.model``): every OpenAI
embedding model (text-embedding-3-small/-large, ada-002) uses cl100k_base; o200k_base is the
GPT-4o family's. A model tiktoken does not know gets cl100k_base, the embedding models' encoding.

Both ``core`` (the OpenAI embedder) and ``sandbox`` (the OpenAI simulator) read these; this
package imports neither. Licences: see LICENSE beside this file.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
from importlib import resources

import tiktoken
import tiktoken.model

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

#: name -> (SHA-256 of the uncompressed file as tiktoken pins it, split pattern, special tokens)
_ENCODINGS: dict[str, tuple[str, str, dict[str, int]]] = {
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        {_ENDOFTEXT: 100257, _FIM_PREFIX: 100258, _FIM_MIDDLE: 100259, _FIM_SUFFIX: 100260,
         _ENDOFPROMPT: 100276},
    ),
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "|".join([
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]),
        {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
}

#: The encoding of a model tiktoken does not know (an OpenAI-compatible server's own model).
DEFAULT_ENCODING = "cl100k_base"
ENCODINGS = tuple(_ENCODINGS)


class EncodingFileCorrupt(RuntimeError):
    """Raised when a shipped encoding file does not match the hash tiktoken pins."""


def read_ranks(name: str) -> bytes:
    """The uncompressed ``.tiktoken`` file of encoding ``name``, verified."""
    expected = _ENCODINGS[name][0]
    data = gzip.decompress(resources.files(__name__).joinpath(f"{name}.tiktoken.gz").read_bytes())
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise EncodingFileCorrupt(f"{name}.tiktoken has SHA-256 {actual}, expected {expected}")
    return data


@functools.cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding ``name`` (cl100k_base or o200k_base), built from the shipped file:
    nothing is downloaded. Built once per process (about half a second)."""
    if name not in _ENCODINGS:
        raise KeyError(f"no shipped encoding {name!r}; shipped: {', '.join(ENCODINGS)}")
    _, pattern, special = _ENCODINGS[name]
    ranks = {base64.b64decode(token): int(rank)
             for token, rank in (line.split() for line in read_ranks(name).splitlines() if line)}
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)


def encoding_name_for_model(model: str) -> str:
    """tiktoken's encoding for ``model`` when it is one we ship, else :data:`DEFAULT_ENCODING`."""
    try:
        name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING
    return name if name in _ENCODINGS else DEFAULT_ENCODING


def encoding_for_model(model: str) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for_model(model))


def count_tokens(text: str, encoding: tiktoken.Encoding) -> int:
    """Tokens of ``text`` as OpenAI counts an input: special-token text is ordinary text."""
    return len(encoding.encode_ordinary(text))
