"""CLIP byte-level BPE tokenizer, token-for-token identical to sam3's `sam3.model.tokenizer_ve.SimpleTokenizer`.

Pipeline for one prompt (names follow the reference):
    basic_clean       ftfy.fix_text, html.unescape twice, str.strip
    whitespace_clean  runs of (regex-module) whitespace -> one space, str.strip
    lower             str.lower
    split_tokens      the reference's token pattern, re-implemented without the `regex` package
    bpe               byte-encode each token, apply the BPE merges (cached per token)
    __call__          [sot] + ids + [eot], truncate (last kept id becomes eot), pad with 0

Design notes
- `ftfy` (pure Python) is a runtime dependency: `fix_text` is a large heuristic mojibake repairer whose
  behaviour cannot be reproduced faithfully in a few lines.
- The reference pattern `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`
  (regex.IGNORECASE) is re-implemented by `split_tokens` with `unicodedata`. Quirks of the `regex` module that are
  reproduced: its `\\s` excludes U+001C..U+001F (unlike `str.isspace`); under IGNORECASE `s` also matches
  U+017F LATIN SMALL LETTER LONG S; and U+0345 COMBINING GREEK YPOGEGRAMMENI (case-folds to a letter) matches no
  alternative, so it is dropped like whitespace.
- Residual difference: `regex` ships its own Unicode database (Unicode 17 for regex 2026.x) while `unicodedata`
  follows the Python build (Unicode 14 for Python 3.11). Code points assigned only in the newer version (category
  Cn here, e.g. some new letters and digits) may be split differently. No assigned character differs.
- Deliberate deviation: the reference treats `context_length=0` as "use the default 77"; here it is an error.
"""

import gzip
import html
import os
import unicodedata
import zlib

import ftfy
import numpy as np

from .errors import Npsam3Error

DEFAULT_CONTEXT_LENGTH = 77
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")  # after an apostrophe, tried in this order
N_MERGES = 49152 - 256 - 2  # merges the reference keeps: vocab of 49408 = 2*256 bytes + merges + 2 specials

# `regex` module `\s` (Unicode White_Space plus the ASCII controls \t\n\v\f\r); unlike str.isspace, no U+001C..1F.
WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
LONG_S = "\u017f"  # regex.IGNORECASE folds it to "s"
YPOGEGRAMMENI = "\u0345"  # regex.IGNORECASE folds it to a letter, so [^\s\p{L}\p{N}] rejects it


def bytes_to_unicode():
    """dict[int, str]: each of the 256 byte values -> a printable character (reversible, as in CLIP)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def get_pairs(word):
    """set[tuple[str, str]]: adjacent symbol pairs of `word` (a tuple of symbols)."""
    return set(zip(word[:-1], word[1:]))


def merge_pair(word, first, second):
    """tuple[str]: `word` with every non-overlapping (first, second), scanned left to right, joined into one symbol."""
    out, i = [], 0
    while i < len(word):
        if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
            out.append(first + second)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def basic_clean(text):
    """str -> str: ftfy repair, HTML entities unescaped twice, outer whitespace stripped (str.strip)."""
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def whitespace_clean(text):
    """str -> str: every run of WHITESPACE becomes one space, then str.strip (as `regex.sub(r"\\s+", " ", t)`)."""
    out, in_space = [], False
    for ch in text:
        if ch in WHITESPACE:
            if not in_space:
                out.append(" ")
            in_space = True
        else:
            out.append(ch)
            in_space = False
    return "".join(out).strip()


def clean_lower(text):
    """str -> str: the reference's default clean function ("lower")."""
    return whitespace_clean(basic_clean(text)).lower()


def _fold(ch):
    """Single-character simple case fold, as far as the ASCII pattern literals can observe it."""
    return "s" if ch == LONG_S else ch.lower() if ch.isascii() else ch


def _matches_literal(text, i, literal):
    """bool: text[i:] starts with `literal` under regex.IGNORECASE (literal is lower-case ASCII)."""
    part = text[i : i + len(literal)]
    return len(part) == len(literal) and all(_fold(a) == b for a, b in zip(part, literal))


def _char_class(ch):
    """'L' letter, 'N' number, 'P' other (punctuation, symbols, marks, controls), or '' (matched by no alternative)."""
    if ch in WHITESPACE or ch == YPOGEGRAMMENI:
        return ""
    cat = unicodedata.category(ch)[0]
    return cat if cat in "LN" else "P"


def split_tokens(text):
    """list[str]: `regex.findall` of the reference token pattern over `text` (leftmost alternative wins)."""
    tokens, i, n = [], 0, len(text)
    while i < n:
        tok = next((s for s in SPECIAL_TOKENS if _matches_literal(text, i, s)), None)
        if tok is None and text[i] == "'":
            tok = next(("'" + c for c in CONTRACTIONS if _matches_literal(text, i + 1, c)), None)
        if tok is not None:
            tokens.append(text[i : i + len(tok)])
            i += len(tok)
            continue
        cls = _char_class(text[i])
        j = i + 1
        if cls in ("L", "P"):  # [\p{L}]+ and [^\s\p{L}\p{N}]+ are greedy runs; [\p{N}] is a single character
            while j < n and _char_class(text[j]) == cls:
                j += 1
        if cls:
            tokens.append(text[i:j])
        i = j
    return tokens


def load_merges(bpe_path):
    """list[tuple[str, str]]: the first N_MERGES merges of a gzipped CLIP BPE file (first line is a header)."""
    try:
        with gzip.open(bpe_path, "rb") as fh:
            lines = fh.read().decode("utf-8").split("\n")
    except FileNotFoundError:
        raise Npsam3Error(f"BPE vocabulary file not found: {os.fspath(bpe_path)}") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise Npsam3Error(f"BPE vocabulary file {os.fspath(bpe_path)} is not readable gzipped text ({e})") from None
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise Npsam3Error(
            f"BPE vocabulary file {os.fspath(bpe_path)} is corrupt: expected {N_MERGES} merge lines of two symbols"
        )
    return merges


class SimpleTokenizer:
    """CLIP BPE tokenizer with sam3's vocabulary layout: 49408 ids, <start_of_text>=49406, <end_of_text>=49407."""

    def __init__(self, bpe_path):
        """bpe_path: str | os.PathLike to `bpe_simple_vocab_16e6.txt.gz`. Raises Npsam3Error if missing or corrupt."""
        merges = load_merges(bpe_path)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {t: t for t in SPECIAL_TOKENS}  # as in the reference: a literal special token maps to its id
        self.vocab_size = len(self.encoder)
        self.sot_token_id = self.encoder[SPECIAL_TOKENS[0]]
        self.eot_token_id = self.encoder[SPECIAL_TOKENS[1]]

    def bpe(self, token):
        """str -> str: space-separated BPE symbols of one byte-encoded token, the last ending in '</w>' (cached)."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        if len(word) == 1:
            return word[0]
        while len(word) > 1:
            bigram = min(get_pairs(word), key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            word = merge_pair(word, *bigram)
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def encode(self, text):
        """str -> list[int]: BPE ids of the cleaned, lower-cased text, without start/end tokens."""
        ids = []
        for token in split_tokens(clean_lower(text)):
            # ftfy has replaced lone surrogates with U+FFFD, so UTF-8 encoding cannot fail
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[sym] for sym in self.bpe(token).split(" "))
        return ids

    def decode(self, ids):
        """Iterable[int] -> str: the text of `ids`; each word end ('</w>') becomes a space, bad UTF-8 is replaced."""
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize(self, texts, context_length=DEFAULT_CONTEXT_LENGTH):
        """str | list[str] -> (ids int64 [B, context_length], truncated bool [B]).

        Each row is [sot] + encode(text) + [eot], zero-padded. A row longer than context_length is cut to
        context_length ids and its last id replaced by eot (so the final kept text token is lost), exactly as in
        the reference; `truncated[b]` tells whether that happened to prompt b.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(context_length, (int, np.integer)) or context_length < 1:
            raise ValueError(f"context_length must be a positive integer, got {context_length!r}")
        ids = np.zeros((len(texts), context_length), dtype=np.int64)
        truncated = np.zeros(len(texts), dtype=bool)
        for b, text in enumerate(texts):
            tokens = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(tokens) > context_length:
                tokens = tokens[:context_length]
                tokens[-1] = self.eot_token_id
                truncated[b] = True
            ids[b, : len(tokens)] = tokens
        return ids, truncated

    def __call__(self, texts, context_length=DEFAULT_CONTEXT_LENGTH):
        """str | list[str] -> int64 [B, context_length]: identical to the reference `SimpleTokenizer.__call__`."""
        return self.tokenize(texts, context_length)[0]
