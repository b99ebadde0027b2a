"""Prompt preparation of Open-Sora 1.2, re-implemented with the Python standard library.

What Open-Sora v1.2.0 does to each prompt before T5 (scripts/inference.py, steps "2. append
score" and "3. clean prompt with T5"; the cleaner is `text_preprocessing` in
opensora/models/text_encoder/t5.py, itself taken from DeepFloyd IF / PixArt):

    prepared = append_scores(prompt, aes, flow, camera_motion)   # suffixes, skipped if present
    cleaned  = clean_caption(clean_caption(prepared))            # the cleaner runs TWICE
    ids      = T5TokenizerFast(cleaned, max_length=300, padding="max_length", truncation=True)

This file is an independent implementation of the same behaviour (same regular expressions in
the same order, written down here as the specification for the C++ port).  It needs only the
standard library plus `sentencepiece` for `tokenize()` / `load_sp()`.

Two third-party pieces of the original are replaced:

* `BeautifulSoup(caption, features="html.parser").text` (bs4 4.12) -> `html_to_text()`.  bs4's
  "html.parser" builder *is* the standard library `html.parser.HTMLParser` plus a small tree
  builder, so `html_to_text()` subclasses the same stdlib parser and re-implements only the
  parts of bs4's tree builder that decide which strings end up in `.text`.  On the same Python
  version the result is identical (checked on the fixture corpus and random inputs against
  bs4 4.12.3); remaining risks are listed in tests/data/text/README.md.
* `ftfy.fix_text` -> nothing by default.  `ftfy_lite=True` applies the deterministic,
  character-level part of ftfy 6.2's fix_text (everything except mojibake repair); see
  `ftfy_lite()`.  tests/data/text/prompts.jsonl uses the default (no ftfy),
  prompts_ftfy_lite.jsonl uses ftfy_lite (identical to the real Open-Sora output on its corpus).

The tokenizer part reproduces HF T5TokenizerFast (what Open-Sora calls), not raw sentencepiece;
see the comment above `_HfUnigram` for where the two differ.

Everything about Python's `re` that a port must copy (Unicode \\w \\d \\s \\b, leftmost-first
backtracking, `$` also matching before a final newline) is noted in tests/data/text/README.md.
"""

import html
import re
import unicodedata
import urllib.parse
from html.entities import html5 as _HTML5_ENTITIES
from html.parser import HTMLParser

MAX_LENGTH = 300          # T5 tokens incl. EOS (Open-Sora config text_encoder.model_max_length)
PAD_ID = 0
EOS_ID = 1
UNK_ID = 2

DEFAULT_SPIECE = "/work/shared/assets/t5/spiece.model"

# Camera-motion values offered by Open-Sora 1.2 (gradio/app.py dropdown).
CAMERA_MOTIONS = ("none", "pan right", "pan left", "tilt up", "tilt down", "zoom in", "zoom out", "static")


class CaptionRejected(ValueError):
    """The original raises bs4.ParserRejectedMarkup here (html.parser hit an AssertionError,
    e.g. on '<![' not followed by a known marked-section keyword).  Open-Sora would crash."""


# ---------------------------------------------------------------------------------------------
# 1. Score suffixes (opensora/utils/inference_utils.py append_score_to_prompts)
# ---------------------------------------------------------------------------------------------

def append_scores(prompt, aes=None, flow=None, camera_motion=None):
    """Append the score-conditioning suffixes in the fixed order aes, flow, camera motion.

    Each suffix is skipped when the ORIGINAL prompt (not the one being extended) already holds
    its key phrase, compared case-sensitively: "aesthetic score:", "motion score:",
    "camera motion:".  Numbers use Python's "{:.1f}" (round-half-even on the binary value,
    same as C printf "%.1f").  camera_motion "none" is appended literally, as the CLI does
    (only the gradio app maps "none" to no suffix).
    """
    if camera_motion is not None and camera_motion not in CAMERA_MOTIONS:
        raise ValueError("camera_motion must be one of %s, got %r" % (", ".join(CAMERA_MOTIONS), camera_motion))
    out = prompt
    if aes is not None and "aesthetic score:" not in prompt:
        out += " aesthetic score: %s." % format(aes, ".1f")
    if flow is not None and "motion score:" not in prompt:
        out += " motion score: %s." % format(flow, ".1f")
    if camera_motion is not None and "camera motion:" not in prompt:
        out += " camera motion: %s." % camera_motion
    return out


# ---------------------------------------------------------------------------------------------
# 2a. HTML stripping: the equivalent of BeautifulSoup(text, "html.parser").text
# ---------------------------------------------------------------------------------------------

# bs4 HTMLTreeBuilder tables (bs4/builder/__init__.py, 4.12).
_VOID_TAGS = frozenset((
    "area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link", "menuitem",
    "meta", "param", "source", "track", "wbr",
    "basefont", "bgsound", "command", "frame", "image", "isindex", "nextid", "spacer"))
_PRESERVE_WS_TAGS = frozenset(("pre", "textarea"))
# Strings inside these tags get a NavigableString subclass and are NOT part of `.text`.
_STRING_CONTAINER_TAGS = frozenset(("rt", "rp", "style", "script", "template"))
_ASCII_SPACES = "\x20\x0a\x09\x0c\x0d"

# String kinds: only plain text and CDATA are collected by `.text`.
_TEXT, _CDATA, _HIDDEN = 0, 1, 2


class _SoupText(HTMLParser):
    """Collects what bs4's `.text` would return.  The tokenizer is the stdlib parser with
    convert_charrefs=False (as bs4 sets it); entity and character references are resolved by
    the two handlers below, the same way bs4 4.12 does it."""

    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.pieces = []             # the output strings, in document order
        self.pending = []            # data since the last flush (bs4 `current_data`)
        self.stack = []              # open tag names (bs4 `tagStack` minus the root)
        self.closed_void = []        # bs4 `already_closed_empty_element`

    # -- bs4 BeautifulSoup.endData: turn the pending data into one string ------------------
    def _flush(self, kind=_TEXT):
        if not self.pending:
            return
        s = "".join(self.pending)
        self.pending = []
        if not any(t in _PRESERVE_WS_TAGS for t in self.stack):
            # A string made only of ASCII whitespace (or empty) shrinks to "\n" or " ".
            if all(c in _ASCII_SPACES for c in s):
                s = "\n" if "\n" in s else " "
        if kind == _TEXT and any(t in _STRING_CONTAINER_TAGS for t in self.stack):
            kind = _HIDDEN           # script/style/template/rt/rp content
        if kind != _HIDDEN:
            self.pieces.append(s)

    def _push(self, name):
        self._flush()
        self.stack.append(name)

    def _pop_to(self, name):
        # bs4 _popToTag: pop up to and including the most recent open tag of that name;
        # nothing happens when no such tag is open.
        self._flush()
        if name in self.stack:
            while self.stack:
                if self.stack.pop() == name:
                    break

    # -- html.parser callbacks (bs4 BeautifulSoupHTMLParser) -----------------------------------
    def handle_starttag(self, tag, attrs, void_closes=True):
        self._push(tag)
        if void_closes and tag in _VOID_TAGS:
            # void element: closed at once; a later explicit </tag> is ignored once.
            self._pop_to(tag)
            self.closed_void.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs, void_closes=False)
        self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in self.closed_void:
            self.closed_void.remove(tag)
        else:
            self._pop_to(tag)

    def handle_data(self, data):
        self.pending.append(data)

    def handle_charref(self, name):
        # "&#NNN;" / "&#xHH;".  Values < 256 are read as windows-1252 bytes (so &#150; is an
        # en dash, &#147; a left double quote); bytes cp1252 leaves undefined (0x81 0x8d 0x8f
        # 0x90 0x9d) fall back to chr(); invalid code points give U+FFFD.
        if name[:1] in ("x", "X"):
            code = int(name.lstrip(name[0]), 16)
        else:
            code = int(name)
        data = None
        if code < 256:
            try:
                data = bytes([code]).decode("windows-1252")
            except UnicodeDecodeError:
                data = None
        if not data:
            try:
                data = chr(code)
            except (ValueError, OverflowError):
                data = None
        self.handle_data(data or "\ufffd")

    def handle_entityref(self, name):
        # Any HTML5 entity name (html.entities.html5, with or without its ';'); unknown names
        # stay literal as "&name" (the ';' html.parser consumed is lost).
        ch = _HTML5_ENTITIES.get(name + ";")
        if ch is None:
            ch = _HTML5_ENTITIES.get(name)
        self.handle_data(ch if ch is not None else "&" + name)

    def _special(self, data, kind):
        self._flush()
        self.pending.append(data)
        self._flush(kind)

    def handle_comment(self, data):
        self._special(data, _HIDDEN)            # <!-- ... -->, also "bogus comments"

    def handle_decl(self, data):
        self._special(data, _HIDDEN)            # <!doctype ...>

    def handle_pi(self, data):
        self._special(data, _HIDDEN)            # <? ... >

    def unknown_decl(self, data):
        if data.upper().startswith("CDATA["):   # <![CDATA[ ... ]]> is kept as text
            self._special(data[len("CDATA["):], _CDATA)
        else:
            self._special(data, _HIDDEN)

    def text(self):
        self._flush()
        return "".join(self.pieces)


def html_to_text(s):
    """Text content of `s` parsed as HTML, as BeautifulSoup(s, "html.parser").text gives it."""
    p = _SoupText()
    try:
        p.feed(s)
        p.close()
    except AssertionError as e:
        raise CaptionRejected(str(e)) from None
    return p.text()


# ---------------------------------------------------------------------------------------------
# 2b. Optional: the deterministic part of ftfy.fix_text (ftfy 6.2 defaults)
# ---------------------------------------------------------------------------------------------

_FTFY_LIGATURES = {
    0x0132: "IJ", 0x0133: "ij", 0x0149: "\u02bcn", 0x01F1: "DZ", 0x01F2: "Dz", 0x01F3: "dz",
    0x01C4: "D\u017d", 0x01C5: "D\u017e", 0x01C6: "d\u017e", 0x01C7: "LJ", 0x01C8: "Lj",
    0x01C9: "lj", 0x01CA: "NJ", 0x01CB: "Nj", 0x01CC: "nj", 0xFB00: "ff", 0xFB01: "fi",
    0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl", 0xFB05: "\u017ft", 0xFB06: "st"}
_FTFY_WIDTH = {0x3000: " "}
for _cp in range(0xFF01, 0xFFF0):
    _alt = unicodedata.normalize("NFKC", chr(_cp))
    if _alt != chr(_cp):
        _FTFY_WIDTH[_cp] = _alt
_FTFY_CONTROL = dict.fromkeys(
    list(range(0x00, 0x09)) + [0x0B] + list(range(0x0E, 0x20)) + [0x7F]
    + list(range(0x206A, 0x2070)) + [0xFEFF] + list(range(0xFFF9, 0xFFFD)))
_FTFY_ANSI = re.compile("\x1b\\[((?:\\d|;)*)([a-zA-Z])")
_FTFY_C1 = re.compile("[\x80-\x9f]")
_FTFY_SINGLE_QUOTE = re.compile("[\u02bc\u2018-\u201b]")
_FTFY_DOUBLE_QUOTE = re.compile("[\u201c-\u201f]")


def _c1_as_cp1252(m):
    b = m.group(0).encode("latin-1")
    try:
        return b.decode("windows-1252")
    except UnicodeDecodeError:     # "sloppy" windows-1252: undefined bytes map to themselves
        return m.group(0)


def ftfy_lite(text):
    """ftfy 6.2 fix_text minus fix_encoding (mojibake detection, restore_byte_a0,
    replace_lossy_sequences, decode_inconsistent_utf8) and minus unescape_html (no '&' can
    reach it inside clean_caption).  Repeated until nothing changes, like ftfy."""
    while True:
        before = text
        text = _FTFY_C1.sub(_c1_as_cp1252, text)                       # fix_c1_controls
        text = text.translate(_FTFY_LIGATURES)                         # fix_latin_ligatures
        text = text.translate(_FTFY_WIDTH)                             # fix_character_width
        text = _FTFY_SINGLE_QUOTE.sub("'", _FTFY_DOUBLE_QUOTE.sub('"', text))  # uncurl_quotes
        text = (text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
                .replace("\u2029", "\n").replace("\x85", "\n"))        # fix_line_breaks
        text = _fix_surrogates(text)                                   # fix_surrogates
        text = _FTFY_ANSI.sub("", text)                                # remove_terminal_escapes
        text = text.translate(_FTFY_CONTROL)                           # remove_control_chars
        text = unicodedata.normalize("NFC", text)                      # normalization="NFC"
        if text == before:
            return text


def _fix_surrogates(text):
    if not re.search("[\ud800-\udfff]", text):
        return text
    text = re.sub("[\ud800-\udbff][\udc00-\udfff]",
                  lambda m: chr(0x10000 + (ord(m.group(0)[0]) - 0xD800) * 0x400 + (ord(m.group(0)[1]) - 0xDC00)),
                  text)
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


# ---------------------------------------------------------------------------------------------
# 2c. clean_caption, step by step
# ---------------------------------------------------------------------------------------------
# All patterns are Python `re` on str: \w \d \s \b are Unicode-aware, [a-zA-Z] is ASCII only,
# alternatives are tried left to right, quantifiers are greedy with backtracking.

# URLs, two passes.  Alternative A removes only a scheme head "http:" / "https:" followed by
# 1-3 slashes or one [a-zA-Z0-9%] character; alternative B removes a host-like run ending in
# one of the listed TLDs plus any [\w/-] tail, not followed by "@".  The second pattern is the
# same with "www:" in place of "https?:" (a typo in the original: it never matches "www.").
_URL_HTTP = re.compile(
    r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])"
    r"|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)))")
_URL_WWW = re.compile(
    r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])"
    r"|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)))")
_HANDLE = re.compile(r"@[\w\d]+\b")                   # @nickname
# CJK blocks removed (the original uses 7 separate substitutions; being disjoint ranges that
# are all deleted, one class gives the same result): CJK strokes, katakana phonetic ext.,
# enclosed CJK, CJK compatibility, ext. A, Yijing hexagrams, CJK unified ideographs.
_CJK_RANGES = ("\u31c0-\u31ef", "\u31f0-\u31ff", "\u3200-\u32ff", "\u3300-\u33ff",
               "\u3400-\u4dbf", "\u4dc0-\u4dff", "\u4e00-\u9fff")
_CJK = [re.compile("[%s]+" % r) for r in _CJK_RANGES]
# Every dash-like character, runs included, becomes one "-".
_DASHES = re.compile(
    "[\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40"
    "\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d]+")
_DQUOTES = re.compile("[`\u00b4\u00ab\u00bb\u201c\u201d\u00a8]")   # ` ´ « » “ ” ¨  -> "
_SQUOTES = re.compile("[\u2018\u2019]")                             # ‘ ’ -> '
_QUOT = re.compile(r"&quot;?")
_AMP = re.compile(r"&amp")
_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_ARTICLE_ID = re.compile(r"\d:\d\d\s+$")
_LITERAL_BACKSLASH_N = re.compile(r"\\n")             # the two characters '\' 'n'
_HASH_SHORT = re.compile(r"#\d{1,3}\b")
_HASH_LONG = re.compile(r"#\d{5,}\b")
_LONG_NUMBER = re.compile(r"\b\d{6,}\b")
_FILENAME = re.compile(r"[\S]+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)")
_MULTI_QUOTE = re.compile(r"[\"\']{2,}")
_MULTI_DOT = re.compile(r"[\.]{2,}")
# Characters replaced by a space, runs included: # ® • © ™ & @ · º ½ ¾ ¿ ¡ § ~ ) ( ] [ } { | \ / *
_BAD_PUNCT = re.compile("[#\u00ae\u2022\u00a9\u2122&@\u00b7\u00ba\u00bd\u00be\u00bf\u00a1\u00a7~)(\\]\\[}{|\\\\/*]+")
_LONE_DOT = re.compile(r"\s+\.\s+")
_DASH_OR_UNDERSCORE = re.compile(r"(?:\-|\_)")
_ID_LETTERS_DIGITS = re.compile(r"\b[a-zA-Z]{1,3}\d{3,15}\b")          # jc6640
_ID_L_D_L = re.compile(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b")                   # jc6640vc
_ID_D_L_D = re.compile(r"\b\d+[a-zA-Z]+\d+\b")                         # 6640vc231
_SHIPPING = re.compile(r"(worldwide\s+)?(free\s+)?shipping")
_DOWNLOAD = re.compile(r"(free\s)?download(\sfree)?")
_CLICK = re.compile(r"\bclick\b\s(?:for|on)\s\w+")
_EXT_WORD = re.compile(r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?")
_PAGE = re.compile(r"\bpage\s+\d+\b")
_ID_MIXED = re.compile(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b")  # j2d1a2a...
_DIMENSIONS = re.compile("\\b\\d+\\.?\\d*[x\u0445\u00d7]\\d+\\.?\\d*\\b")  # 1920x1080, x / Cyrillic х / ×
_SPACED_COLON = re.compile(r"\b\s+\:\s+")
_PUNCT_THEN_WORD = re.compile(r"(\D[,\./])\b")
_WS = re.compile(r"\s+")
_WRAPPING_QUOTES = re.compile(r"^[\"\']([\w\W]+)[\"\']$")
_LEADING_PUNCT = re.compile(r"^[\'\_,\-\:;]")
_TRAILING_PUNCT = re.compile(r"[\'\_,\-\:\-\+]$")
_DOT_WORD = re.compile(r"^\.\S+$")


def basic_clean(text, ftfy_lite_on=False):
    """ftfy.fix_text (omitted, or ftfy_lite), html.unescape twice, strip."""
    if ftfy_lite_on:
        text = ftfy_lite(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def clean_caption(caption, ftfy_lite=False):
    """One pass of the DeepFloyd/PixArt caption cleaner (Open-Sora t5.py clean_caption)."""
    s = str(caption)
    # 1. URL-decode: "+" -> " ", %XX byte runs -> UTF-8 (invalid bytes -> U+FFFD).
    s = urllib.parse.unquote_plus(s)
    # 2. Strip surrounding whitespace, full Unicode lower-casing (İ -> i + U+0307, final σ -> ς).
    s = s.strip().lower()
    # 3. The literal tag "<person>" becomes the word "person" (before HTML stripping).
    s = s.replace("<person>", "person")
    # 4-5. URLs (see the patterns above).
    s = _URL_HTTP.sub("", s)
    s = _URL_WWW.sub("", s)
    # 6. HTML: drop tags/comments, decode entities (bs4 .text equivalent).
    s = html_to_text(s)
    # 7. @handles.
    s = _HANDLE.sub("", s)
    # 8. CJK characters (7 Unicode blocks, in the original's order).
    for rx in _CJK:
        s = rx.sub("", s)
    # 9. Dashes -> "-".
    s = _DASHES.sub("-", s)
    # 10. Double-quote-like -> '"', curly single quotes -> "'".
    s = _DQUOTES.sub('"', s)
    s = _SQUOTES.sub("'", s)
    # 11. Left-over entity text: "&quot" (with optional ';') and "&amp" are deleted.
    s = _QUOT.sub("", s)
    s = _AMP.sub("", s)
    # 12. IPv4-looking addresses -> " ".
    s = _IPV4.sub(" ", s)
    # 13. "d:dd" + trailing whitespace at the very end is deleted (article ids / times).
    s = _ARTICLE_ID.sub("", s)
    # 14. The two characters backslash + "n" -> " ".
    s = _LITERAL_BACKSLASH_N.sub(" ", s)
    # 15. "#123" (1-3 digits) and "#12345..." (5+ digits) deleted; 6+ digit numbers deleted.
    s = _HASH_SHORT.sub("", s)
    s = _HASH_LONG.sub("", s)
    s = _LONG_NUMBER.sub("", s)
    # 16. File names: any non-space run followed by ".png" etc. (no end anchor).
    s = _FILENAME.sub("", s)
    # 17. Runs of 2+ quotes (' or ") -> one '"'; runs of 2+ dots -> " ".
    s = _MULTI_QUOTE.sub('"', s)
    s = _MULTI_DOT.sub(" ", s)
    # 18. "Bad punctuation" runs -> " ".
    s = _BAD_PUNCT.sub(" ", s)
    # 19. A dot between whitespace -> " ".
    s = _LONE_DOT.sub(" ", s)
    # 20. More than 3 of "-"/"_" in the caption: all of them -> " ".
    if len(_DASH_OR_UNDERSCORE.findall(s)) > 3:
        s = _DASH_OR_UNDERSCORE.sub(" ", s)
    # 21. basic_clean: (ftfy), html.unescape twice, strip.
    s = basic_clean(s, ftfy_lite)
    # 22. Product-id-like tokens.
    s = _ID_LETTERS_DIGITS.sub("", s)
    s = _ID_L_D_L.sub("", s)
    s = _ID_D_L_D.sub("", s)
    # 23. Shop spam phrases.
    s = _SHIPPING.sub("", s)
    s = _DOWNLOAD.sub("", s)
    s = _CLICK.sub("", s)
    s = _EXT_WORD.sub("", s)
    s = _PAGE.sub("", s)
    # 24. Mixed letter/digit ids -> " ".
    s = _ID_MIXED.sub(" ", s)
    # 25. Dimensions like 1920x1080 deleted.
    s = _DIMENSIONS.sub("", s)
    # 26. " : " -> ": " (only after a word boundary).
    s = _SPACED_COLON.sub(": ", s)
    # 27. A space is inserted after "," "." "/" that follow a non-digit and precede a
    #     word boundary.
    s = _PUNCT_THEN_WORD.sub(r"\1 ", s)
    # 28. Whitespace runs -> " ".  (The original then calls caption.strip() and discards the
    #     result, so steps 29-31 see a possible leading/trailing space.)
    s = _WS.sub(" ", s)
    # 29. One pair of wrapping quotes ('...' "..." or mixed) removed.
    s = _WRAPPING_QUOTES.sub(r"\1", s)
    # 30. One leading ' _ , - : ; and one trailing ' _ , - : + removed.
    s = _LEADING_PUNCT.sub("", s)
    s = _TRAILING_PUNCT.sub("", s)
    # 31. A caption that is a single token starting with "." becomes empty.
    s = _DOT_WORD.sub("", s)
    # 32. Final strip.
    return s.strip()


def clean(prompt, ftfy_lite=False):
    """Open-Sora text_preprocessing(): clean_caption applied twice."""
    return clean_caption(clean_caption(prompt, ftfy_lite), ftfy_lite)


def prepare(prompt, aes=None, flow=None, camera_motion=None, ftfy_lite=False):
    """Suffixes, then the double clean: the exact text handed to the T5 tokenizer."""
    return clean(append_scores(prompt, aes, flow, camera_motion), ftfy_lite)


# ---------------------------------------------------------------------------------------------
# 3. Tokenisation (T5TokenizerFast, max_length=300, padding="max_length", truncation=True)
# ---------------------------------------------------------------------------------------------
# Open-Sora uses HF's fast tokenizer (the Rust `tokenizers` Unigram model, built in-process
# from spiece.model because DeepFloyd/t5-v1_1-xxl ships no tokenizer.json), not the
# sentencepiece library.  Same vocabulary, scores and normalisation map, but they break ties
# between equally scored segmentations differently: sentencepiece 0.1.97 encodes "what????" as
# [▁what, ???, ?] and HF as [▁what, ?, ???] (likewise "!!!!!!!!", "77777", "‴", ...).  So the
# segmentation below re-implements HF's Unigram search (tokenizers/src/models/unigram/model.rs,
# encode_optimized: f32 piece scores summed in double, first candidate kept on ties).
# sentencepiece is used only for the normalisation: the concatenated pieces of
# `sp.EncodeAsPieces(text)` are the normalised text with "▁" for spaces and the "▁" prefix,
# which equals HF's Precompiled + Metaspace output EXCEPT where HF's grapheme-level charsmap
# lookup differs (a grapheme cluster shorter than 6 UTF-8 bytes that starts with a mapped
# character, e.g. "ﬁ" + U+0301, "…" + U+0301, "e" + U+0301 + U+0323: HF keeps only the
# mapping of the shortest mapped prefix; longer clusters are mapped character by character)
# and where old HF converters keep a trailing space (see tests/data/text/README.md).

_META = "\u2581"
_K_UNK_PENALTY = 10.0
_VOCABS = {}


class _HfUnigram:
    """HF `tokenizers` Unigram segmentation over the vocabulary of a SentencePiece model."""

    def __init__(self, sp):
        self.sp = sp
        self.vocab = {}
        scores = [0.0]                     # HF's min_score also sees <pad> </s> <unk> (0.0)
        for i in range(sp.GetPieceSize()):
            if sp.IsControl(i) or sp.IsUnknown(i):
                continue                   # <pad> </s> <unk>: special tokens, never in text
            self.vocab[sp.IdToPiece(i)] = (i, sp.GetScore(i))
            scores.append(sp.GetScore(i))
        self.max_len = max(len(p) for p in self.vocab)
        self.unk_id = sp.unk_id()
        self.unk_score = min(scores) - _K_UNK_PENALTY

    def normalize(self, text):
        """Normalised text, spaces as "▁", with the "▁" prefix (HF Metaspace output)."""
        norm = "".join(self.sp.EncodeAsPieces(text))
        # HF prepends "▁" only when the text does not already start with it; sentencepiece
        # always adds its dummy prefix.
        if text.startswith(_META) and norm.startswith(_META + _META):
            norm = norm[1:]
        return norm

    def segment_word(self, word):
        """Best path over one pre-token; ties go to the candidate seen first (smaller start,
        then shorter piece), scores summed in double precision, as HF does."""
        n = len(word)
        score = [0.0] * (n + 1)
        start_of = [None] * (n + 1)
        id_of = [None] * (n + 1)
        for start in range(n):
            base = score[start]
            single = False
            for length in range(1, min(self.max_len, n - start) + 1):
                hit = self.vocab.get(word[start:start + length])
                if hit is None:
                    continue
                end = start + length
                cand = base + hit[1]
                if start_of[end] is None or cand > score[end]:
                    score[end], start_of[end], id_of[end] = cand, start, hit[0]
                if length == 1:
                    single = True
            if not single:                 # unknown character: one-character <unk> candidate
                end = start + 1
                cand = base + self.unk_score
                if start_of[end] is None or cand > score[end]:
                    score[end], start_of[end], id_of[end] = cand, start, self.unk_id
        out = []                           # backtrack; consecutive <unk> are fused into one
        end = n
        unk_run = ""
        while end > 0:
            start = start_of[end]
            if id_of[end] == self.unk_id:
                unk_run = word[start:end] + unk_run
            else:
                if unk_run:
                    out.append((unk_run, self.unk_id))
                    unk_run = ""
                out.append((word[start:end], id_of[end]))
            end = start
        if unk_run:
            out.append((unk_run, self.unk_id))
        out.reverse()
        return out

    def encode(self, text):
        """[(piece, id)] for `text` (no EOS)."""
        norm = self.normalize(text)
        out = []
        # Metaspace split, "merged with next": every "▁" starts a new pre-token.
        cut = 0
        for i in range(1, len(norm) + 1):
            if i == len(norm) or norm[i] == _META:
                if i > cut:
                    out.extend(self.segment_word(norm[cut:i]))
                cut = i
        return out


def _hf_unigram(sp):
    key = id(sp)
    if key not in _VOCABS or _VOCABS[key].sp is not sp:
        _VOCABS[key] = _HfUnigram(sp)
    return _VOCABS[key]


def load_sp(path=DEFAULT_SPIECE):
    import sentencepiece  # Debian python3-sentencepiece
    sp = sentencepiece.SentencePieceProcessor()
    if not sp.Load(path):
        raise RuntimeError("cannot load " + path)
    return sp


def tokenize(text, sp, max_length=MAX_LENGTH):
    """HF T5TokenizerFast(text, max_length=300, padding="max_length", truncation=True).

    Returns a dict: input_ids (max_length), attention_mask (max_length; 1 on text + EOS),
    ids (un-padded, incl. EOS), pieces (all pieces, untruncated), n_dropped (pieces cut).
    `sp` is a loaded sentencepiece.SentencePieceProcessor (spiece.model).
    Assumes `text` holds no special-token strings ("</s>", "<pad>", "<unk>", "<extra_id_N>"),
    which HF would map straight to their ids; cleaned captions never do.
    """
    enc = _hf_unigram(sp).encode(text)
    pieces = [p for p, _ in enc]
    raw = [i for _, i in enc]
    keep = max_length - 1
    n_dropped = max(0, len(raw) - keep)
    ids = raw[:keep] + [EOS_ID]
    pad = max_length - len(ids)
    return {
        "input_ids": ids + [PAD_ID] * pad,
        "attention_mask": [1] * len(ids) + [0] * pad,
        "ids": ids,
        "pieces": pieces,
        "n_dropped": n_dropped,
    }


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Prepare one prompt the way Open-Sora 1.2 does.")
    ap.add_argument("prompt")
    ap.add_argument("--aes", type=float)
    ap.add_argument("--flow", type=float)
    ap.add_argument("--camera-motion")
    ap.add_argument("--ftfy-lite", action="store_true")
    ap.add_argument("--spiece", default=DEFAULT_SPIECE)
    a = ap.parse_args()
    prepared = append_scores(a.prompt, a.aes, a.flow, a.camera_motion)
    cleaned = clean(prepared, a.ftfy_lite)
    tok = tokenize(cleaned, load_sp(a.spiece))
    print(json.dumps({"prepared": prepared, "cleaned": cleaned, "pieces": tok["pieces"],
                      "ids": tok["ids"], "n_dropped": tok["n_dropped"]}, ensure_ascii=False))
