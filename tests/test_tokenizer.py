"""npsam3.tokenizer against the reference sam3.model.tokenizer_ve.SimpleTokenizer (sam3 0.1.4).

The reference module is loaded straight from its file so that the heavy `sam3` package __init__ (the whole model
builder) is not imported; it still imports torch, regex and ftfy. The vocabulary comes from open_clip_torch.

Random prompts use only code points assigned in this Python's Unicode database: `regex` carries a newer database,
so code points unassigned here (category Cn) but letters/digits there split differently (documented residual).
"""

import gzip
import importlib.util
import os
import random
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from npsam3.errors import Npsam3Error
from npsam3.tokenizer import SimpleTokenizer, split_tokens, _char_class, _fold

CONTEXT_LENGTHS = (16, 32, 77)


def _package_dir(name):
    spec = importlib.util.find_spec(name)  # top-level only: does not execute the package
    assert spec is not None, f"{name} is not installed (the convert extra provides it)"
    return spec.submodule_search_locations[0]


@pytest.fixture(scope="module")
def bpe_path():
    return os.path.join(_package_dir("open_clip"), "bpe_simple_vocab_16e6.txt.gz")


@pytest.fixture(scope="module")
def ref_module():
    path = os.path.join(_package_dir("sam3"), "model", "tokenizer_ve.py")
    spec = importlib.util.spec_from_file_location("_sam3_tokenizer_ve", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ref(ref_module, bpe_path):
    return ref_module.SimpleTokenizer(bpe_path=bpe_path)


@pytest.fixture(scope="module")
def tok(bpe_path):
    return SimpleTokenizer(bpe_path)


# ---------------------------------------------------------------------------------------------------------------
# Corpus: explicit edge cases plus seeded random mixed-script prompts.

HAND_WRITTEN = [
    # plain words and phrases
    "a dog", "dog", "red car on the left", "the person wearing a blue shirt", "A Dog", "RED CAR", "traffic light",
    "yellow school bus", "cat", "a photo of a cat sitting on a red sofa next to the window", "x", "I", "ok",
    # punctuation
    "dog.", "dog,cat", "dog!!!", "what?!", "(left) [right] {up}", "a-b_c/d\\e", "@#$%^&*", "...", "--", "'", "''",
    "\"quoted\"", "a;b:c", "~`|<>", "<dog>", "e-mail", "50%", "$100", "#hashtag", "C++", "a+b=c",
    # contractions and apostrophes
    "it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "'s", "'t", "'re", "'ve", "'m",
    "'ll", "'d", "''s", "s's't", "'sx", "'ss", "dog's ball", "rock 'n' roll", "the '90s", "o'clock", "'hello'",
    "it\u2019s", "it\u017fs", "'\u017f", "'S", "'LL",
    # special-token literals (the reference maps them to the special ids)
    "<start_of_text>", "<end_of_text>", "a<start_of_text>b", "!<end_of_text>", "<START_OF_TEXT>",
    "<\u017ftart_of_text>",
    "<|startoftext|>", "<|endoftext|>", "<start_of_text", "start_of_text>",
    # digits and numbers
    "123", "3 dogs", "3.14159", "1,000,000", "2nd place", "4x4 truck", "007", "1e10", "0x1F", "\u0661\u0662\u0663",
    "\u0967\u0968", "\u00bd", "\u2167", "\u2460\u2461", "\u00b2", "\uff11\uff12", "\U0001d7d8",
    # HTML entities, single and double escaped
    "&amp;", "&lt;dog&gt;", "&#39;s", "a&nbsp;dog", "&amp;amp;", "&amp;lt;b&amp;gt;", "&amp;#39;", "&quot;hi&quot;",
    "&copy; 2024", "&#x1F600;", "&bogus;", "& amp;", "AT&T", "fish &amp; chips", "&amp;nbsp;x", "&lt;br&gt;dog",
    "&#0;", "&#128512;",
    # accents and combining marks
    "caf\u00e9", "cafe\u0301", "na\u00efve", "\u00c5ngstr\u00f6m", "Z\u00fcrich", "\u0151", "e\u0301\u0301\u0301",
    "a\u0308\u0323", "\u0301", "\u0345", "\u03b1\u0345", "\u1fb3", "\u00df", "\u1e9e", "\u0130stanbul", "\u0131",
    "\u212a", "\u212b", "\u03a3\u039f\u03a3", "Stra\u00dfe", "\u0149",
    # mojibake
    "caf\u00c3\u00a9", "\u00e2\u20ac\u2122", "don\u00e2\u20ac\u2122t", "\u00c3\u00a9t\u00c3\u00a9",
    "\u00e2\u20ac\u0153quoted\u00e2\u20ac\u009d", "Ã¼ber", "Ã\u00a0 la", "ÃƒÂ©",
    "\u00e6\u0097\u00a5\u00e6\u009c\u00ac",
    "saf\u00c3\u00a9 \u00c3 la", "\u00c2\u00a0dog",
    # CJK, Arabic, Devanagari, other scripts
    "\u72d7", "\u4e00\u53ea\u72d7", "\u3044\u306c", "\u30a4\u30cc", "\uac15\uc544\uc9c0", "\u732b\u548c\u72d7",
    "\u0643\u0644\u0628", "\u0627\u0644\u0633\u064a\u0627\u0631\u0629 \u0627\u0644\u062d\u0645\u0631\u0627\u0621",
    "\u0915\u0941\u0924\u094d\u0924\u093e", "\u0932\u093e\u0932 \u0915\u093e\u0930",
    "\u0441\u043e\u0431\u0430\u043a\u0430",
    "\u03c3\u03ba\u03cd\u03bb\u03bf\u03c2", "\u05db\u05dc\u05d1", "\u0e2a\u0e38\u0e19\u0e31\u0e02",
    "\u10eb\u10d0\u10e6\u10da\u10d8",
    "dog \u72d7 \u0643\u0644\u0628 \u0915\u0941\u0924\u094d\u0924\u093e", "\U00020000\U0002a6d6",
    # emoji, ZWJ sequences, skin tones, flags, keycaps
    "\U0001f436", "\U0001f415 dog", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f44d\U0001f3fd",
    "\U0001f9d1\U0001f3ff\u200d\U0001f692", "\U0001f1fa\U0001f1f8", "1\ufe0f\u20e3", "\u2764\ufe0f",
    "\U0001f3f3\ufe0f\u200d\U0001f308", "a\U0001f600b", "\U0001f600\U0001f600\U0001f600",
    "\U0001f926\U0001f3fb\u200d\u2642\ufe0f",
    # tabs, newlines, odd spaces, zero-width
    "a\tdog", "a\ndog", "a\r\ndog", "  a   dog  ", "a\u00a0dog", "a\u2003dog", "a\u3000dog", "a\u200bdog",
    "a\u200cb\u200dc", "\ufeffdog", "a\u2028b\u2029c", "a\u0085b", "a\u1680b", "a\u202fb\u205fc", "a\x0bb\x0cc",
    "a\u2060b", "a\u180eb", "\t\n dog \n\t",
    # control characters (U+001C..1F are str.isspace but not regex \s)
    "a\x00b", "a\x01b", "a\x1bb", "\x1b[31mred\x1b[0m", "a\x7fb", "a\x80b", "a\x9fb", "a\x1cb", "a\x1db\x1ec\x1fd",
    "\x1cdog\x1f", "\x1c", "a \x1c b", "a\ufffdb", "\ufffe", "\U000e0041",
    # empty and whitespace-only
    "", " ", "   ", "\t", "\n", "\u00a0", "\u3000", "\u200b", " \t\n\u00a0\u2003 ", "&nbsp;", "&amp;nbsp;",
    # fullwidth, ligatures, curly quotes, compatibility forms
    "\uff24\uff4f\uff47", "\uff21 \uff44\uff4f\uff47", "\ufb01sh", "\ufb02ower", "\ufb00", "\ufb03", "\u0132",
    "\u201cdog\u201d", "\u2018cat\u2019", "\u2019s", "\u00abchat\u00bb", "\u201edog\u201c", "\u2033", "\u2122",
    "\u33a1", "\u2460 dog", "\u1d43", "\u210c", "\U0001d400\U0001d401",
    # private use, surrogate-free astral, odd symbols
    "\ue000", "\U000f0000", "\u2603", "\u00ae\u00a9", "\u00ac\u00ad", "a\u00adb", "\u2192\u2190",
]


def _boundary_prompts():
    """'dog' is one BPE id: n words give n + 2 ids, so these sit just below, at and just past each context."""
    out = []
    for ctx in CONTEXT_LENGTHS:
        for n in (ctx - 3, ctx - 2, ctx - 1, ctx):
            out.append(" ".join(["dog"] * n))
    out.append(" ".join(["a red car on the left of the blue house"] * 20))  # far longer than 77
    out.append("supercalifragilisticexpialidocious" * 10)
    out.append("\u72d7" * 120)
    out.append("!" * 300)
    out.append("9" * 100)
    return out


RANDOM_PIECES = [
    "dog", "Cat", "red", "CAR", "on", "the", "left", "it's", "don't", "we're", "I'd", "&amp;", "&lt;", "&#39;",
    "&nbsp;", "&amp;amp;", "caf\u00c3\u00a9", "\u00e2\u20ac\u2122", "<start_of_text>", "<end_of_text>", "'", "'s",
    "\u017f", "\u0345", "\U0001f468\u200d\U0001f469", "\U0001f44d\U0001f3fe", "\ufe0f", "\u200d", "\u200b",
    "\ufb01", "\uff21", "\u201c", "\u201d", "\u2019", " ", "  ", "\t", "\n", "\u00a0", "\u2003", "\u3000", "\x1c",
    "\x1f", "\x00", "\x85", "42", "3.5", "\u0661", "\u00bd",
]
RANDOM_RANGES = [
    (0x21, 0x7E), (0xA1, 0xFF), (0x100, 0x17F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF),
    (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x20A0, 0x20CF),
    (0x2100, 0x218F), (0x2460, 0x24FF), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFB00, 0xFB4F),
    (0xFF01, 0xFF5E), (0x1F300, 0x1F5FF), (0x1F900, 0x1F9FF), (0x1F3FB, 0x1F3FF), (0x1D400, 0x1D7FF),
    (0x0, 0x1F), (0x7F, 0x9F),
]


def _random_assigned_char(rng, lo, hi):
    """A random code point in [lo, hi] assigned in this Python's Unicode database (see the module note on Cn)."""
    while unicodedata.category(ch := chr(rng.randint(lo, hi))) == "Cn":
        pass
    return ch


def _random_prompts(n, seed=0):
    """n prompts of 0-25 pieces: vocabulary fragments, or 1-4 random code points from one of RANDOM_RANGES."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 25)):
            if rng.random() < 0.5:
                parts.append(rng.choice(RANDOM_PIECES))
            else:
                lo, hi = rng.choice(RANDOM_RANGES)
                parts.append("".join(_random_assigned_char(rng, lo, hi) for _ in range(rng.randint(1, 4))))
            if rng.random() < 0.4:
                parts.append(" ")
        out.append("".join(parts))
    return out


CORPUS = HAND_WRITTEN + _boundary_prompts() + _random_prompts(400)


# ---------------------------------------------------------------------------------------------------------------
# Parity with the reference.


def test_corpus_size():
    assert len(CORPUS) >= 300 and len(HAND_WRITTEN) >= 200


def test_clean_matches_reference(ref_module):
    from npsam3.tokenizer import clean_lower, whitespace_clean

    for text in CORPUS:
        assert clean_lower(text) == ref_module._clean_lower(text), repr(text)
        assert whitespace_clean(text) == ref_module.whitespace_clean(text), repr(text)  # raw: controls survive


def test_split_matches_reference_pattern(ref):
    """The scanner equals regex.findall(ref.pat, ...) on raw (uncleaned) text too, whitespace kinds included."""
    for text in CORPUS + [t.lower() for t in CORPUS]:
        assert split_tokens(text) == ref.pat.findall(text), repr(text)


def test_encode_decode_match_reference(tok, ref):
    for text in CORPUS:
        ids = tok.encode(text)
        assert ids == ref.encode(text), repr(text)
        assert tok.decode(ids) == ref.decode(ids), repr(text)


@pytest.mark.parametrize("context_length", CONTEXT_LENGTHS)
def test_call_matches_reference_batch(tok, ref, context_length):
    got = tok(CORPUS, context_length)
    want = ref(CORPUS, context_length).numpy()
    assert got.dtype == np.int64 and got.shape == (len(CORPUS), context_length)
    bad = [CORPUS[i] for i in np.flatnonzero((got != want).any(1))]
    assert not bad, f"{len(bad)} mismatching prompts, first: {bad[:3]!r}"


@pytest.mark.parametrize("context_length", CONTEXT_LENGTHS)
def test_single_prompt_and_truncation_flag(tok, ref, context_length):
    for text in HAND_WRITTEN[:40] + _boundary_prompts():
        ids, truncated = tok.tokenize(text, context_length)
        assert ids.shape == (1, context_length)
        np.testing.assert_array_equal(ids, ref(text, context_length).numpy())
        assert truncated[0] == (len(tok.encode(text)) + 2 > context_length), repr(text)


def test_context_boundary(tok):
    for ctx in CONTEXT_LENGTHS:
        fits, truncated = tok.tokenize([" ".join(["dog"] * (ctx - 2)), " ".join(["dog"] * (ctx - 1))], ctx)
        assert truncated.tolist() == [False, True]
        assert fits[0, -1] == tok.eot_token_id and fits[1, -1] == tok.eot_token_id
        assert (fits[:, 1:-1] == tok.encode("dog")[0]).all()  # the truncated row lost its last "dog" to eot


def test_batch_shapes_and_padding(tok):
    ids, truncated = tok.tokenize(["a dog", "", "red car on the left"], 16)
    assert ids.shape == (3, 16) and ids.dtype == np.int64 and truncated.tolist() == [False] * 3
    assert ids[1, :3].tolist() == [tok.sot_token_id, tok.eot_token_id, 0]
    assert (ids[0, 4:] == 0).all() and ids[0, 3] == tok.eot_token_id
    assert tok([], 16).shape == (0, 16)
    np.testing.assert_array_equal(tok("a dog", 16), tok(["a dog"], 16))
    with pytest.raises(ValueError):
        tok("a dog", 0)


def test_special_ids(tok, ref):
    assert (tok.sot_token_id, tok.eot_token_id, tok.vocab_size) == (ref.sot_token_id, ref.eot_token_id, ref.vocab_size)
    assert tok.encoder == ref.encoder and tok.bpe_ranks == ref.bpe_ranks


def test_unpaired_surrogates_become_replacement_characters(tok, ref):
    """ftfy (and html.unescape for &#xd800;) turn lone surrogates into U+FFFD, so UTF-8 encoding never fails."""
    for text in ("a\ud800b", "\udfff", "&#xd800;", "&amp;#xdc00;x"):
        assert tok.encode(text) == ref.encode(text), repr(text)
    assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")


# ---------------------------------------------------------------------------------------------------------------
# Character classes against the `regex` module over every code point.


def test_char_classes_match_regex_module():
    """Every code point assigned in this Python's Unicode database is classified as `regex` classifies it."""
    import regex
    assigned = "".join(
        chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000 and unicodedata.category(chr(c)) != "Cn"
    )
    pattern = regex.compile(r"(?P<L>[\p{L}])|(?P<N>[\p{N}])|(?P<P>[^\s\p{L}\p{N}])|.", regex.IGNORECASE | regex.DOTALL)
    want = pattern.sub(lambda m: m.lastgroup or "-", assigned)
    got = "".join(_char_class(c) or "-" for c in assigned)
    bad = [f"U+{ord(c):04X} {w}!={g}" for c, w, g in zip(assigned, want, got) if w != g]
    assert not bad, bad[:20]
    # Pattern literals under IGNORECASE: which code points match each letter of the special tokens/contractions.
    literals = "<>_startofxndvmlre"
    for c in set(regex.findall("[" + literals + "]", assigned, regex.IGNORECASE)):
        assert _fold(c) in literals, f"U+{ord(c):04X}"
    for c in [chr(i) for i in range(128)] + ["\u017f"]:
        if _fold(c) in literals:
            assert regex.fullmatch(regex.escape(_fold(c)), c, regex.IGNORECASE), f"U+{ord(c):04X}"


# ---------------------------------------------------------------------------------------------------------------
# Loading errors and import hygiene.


def test_missing_vocab(tmp_path):
    with pytest.raises(Npsam3Error, match="not found"):
        SimpleTokenizer(tmp_path / "nope.txt.gz")


@pytest.mark.parametrize(
    "content",
    [
        b"not gzip at all",
        gzip.compress(b"#version\nfoo bar\n"),  # too few merges
        gzip.compress(b"\xff\xfe\x00garbage"),  # not UTF-8
        gzip.compress(b"#version\n" + b"a b c\n" * 50000),  # not pairs
        gzip.compress(b"#version\nfoo bar\n")[:-6],  # truncated gzip stream
    ],
)
def test_corrupt_vocab(tmp_path, content):
    path = tmp_path / "vocab.txt.gz"
    path.write_bytes(content)
    with pytest.raises(Npsam3Error) as info:
        SimpleTokenizer(path)
    assert "\n" not in str(info.value)


def test_import_does_not_pull_torch_or_regex():
    code = "import sys, npsam3.tokenizer; bad = {'torch', 'regex'} & {m.split('.')[0] for m in sys.modules}; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "set()"
