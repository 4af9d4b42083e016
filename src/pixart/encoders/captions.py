"""Caption cleaning before T5, as the official T5Embedder does it (DeepFloyd IF's cleaner, run twice).

It lowercases; strips URLs, HTML, @handles, CJK characters, IP addresses, long digit runs, file names,
product codes and ids, shop boilerplate ("free shipping", "download", "click for ..."), file-type words
and sizes ("1200x800"); normalises dashes and quotes; collapses punctuation and whitespace and puts a
space after a full stop or comma glued to the next word; fixes mojibake with ftfy and unescapes HTML
entities. The result equals diffusers' PixArtAlphaPipeline cleaning (its default), quirks included
(tests/test_captions.py checks it against diffusers), so the same prompt gives the same T5 features.

ftfy and BeautifulSoup are optional (the `diffusers` extra installs both). Without them the
fallback is documented and deterministic: HTML tags are removed by a regex and text is not re-encoded.
"""

from __future__ import annotations

import html
import re
import urllib.parse
import warnings

# A flag per optional package (not None in the imported name's place, which would not be the name's type).
try:  # optional: better HTML stripping
    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

    _HAVE_BS4 = True
except ImportError:  # pragma: no cover - exercised only without the extra
    _HAVE_BS4 = False
try:  # optional: repairs mojibake ("donâ€™t" -> "don't")
    import ftfy

    _HAVE_FTFY = True
except ImportError:  # pragma: no cover
    _HAVE_FTFY = False

# URLs: a scheme and what follows it, or a host name with one of these endings (and its path). Two passes,
# "https:" then "www:", as the official cleaner: the first pass can expose a host name the second removes.
_HOST = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@)"
_URLS = [re.compile(rf"\b((?:{scheme}:(?:/{{1,3}}|[a-zA-Z0-9%])|{_HOST}))") for scheme in ("https?", "www")]
_HANDLE = re.compile(r"@[\w\d]+\b")
_CJK = re.compile("[\u31c0-\u31ef\u31f0-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4dc0-\u4dff\u4e00-\u9fff]+")
_DASHES = re.compile(
    "[\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40\u301c\u3030"
    "\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d]+"
)
_DOUBLE_QUOTES = re.compile("[`\u00b4\u00ab\u00bb\u201c\u201d\u00a8]")
_SINGLE_QUOTES = re.compile("[\u2018\u2019]")
# Two passes, as diffusers' cleaner runs them: removing "&quot;" can join a new "&amp" for the second.
_HTML_QUOT = re.compile(r"&quot;?")
_HTML_AMP = re.compile(r"&amp")
_IP = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_ARTICLE_ID = re.compile(r"\d:\d\d\s+$")
_NEWLINE_ESCAPE = re.compile(r"\\n")
_HASH_ID = re.compile(r"#\d{1,3}\b|#\d{5,}\b")
_LONG_NUMBER = re.compile(r"\b\d{6,}\b")
# Case-sensitive, as diffusers': the text is lowercased before, yet an entity decoded later ("&#80;" -> "P")
# or a letter that folds ("ſ") would otherwise match.
_FILENAME = re.compile(r"[\S]+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)")
_REPEATED_QUOTES = re.compile(r"[\"']{2,}")
_REPEATED_DOTS = re.compile(r"[\.]{2,}")
_BAD_PUNCTUATION = re.compile(r"[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\/\*]{1,}")
_SPACED_DOT = re.compile(r"\s+\.\s+")
# After unescaping, in this order: product codes and ids, shop and file-type boilerplate, sizes.
_CODES = [
    re.compile(r"\b[a-zA-Z]{1,3}\d{3,15}\b"),  # rtx4090, jc6640
    re.compile(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b"),  # ab12cd
    re.compile(r"\b\d+[a-zA-Z]+\d+\b"),  # 12ab34
]
_BOILERPLATE = [
    re.compile(r"(worldwide\s+)?(free\s+)?shipping"),
    re.compile(r"(free\s)?download(\sfree)?"),
    re.compile(r"\bclick\b\s(?:for|on)\s\w+"),  # "click for details"; a click beetle stays
    re.compile(r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?"),
    re.compile(r"\bpage\s+\d+\b"),
]
_ALNUM_IDS = re.compile(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b")  # j2d1a2a...: becomes a space
_SIZES = re.compile(r"\b\d+\.?\d*[x\u0445\u00d7]\d+\.?\d*\b")  # 1200x800, 3x3, 2.5x3.5 (Latin x, Cyrillic kha, times)
_SPACED_COLON = re.compile(r"\b\s+:\s+")  # "time : 12" -> "time: 12"
_GLUED_PUNCTUATION = re.compile(r"(\D[,./])\b")  # "sofa.the" -> "sofa. the"
_SPACES = re.compile(r"\s+")
_ENCLOSING_QUOTES = re.compile(r"^[\"']([\w\W]+)[\"']$")
_LEADING_PUNCTUATION = re.compile(r"^['_,\-:;]")  # one character, as the official cleaner
_TRAILING_PUNCTUATION = re.compile(r"['_,\-:+]$")
_DOT_WORD = re.compile(r"^\.\S+$")  # a caption that is only ".something"


def _clean_once(text: str) -> str:
    text = urllib.parse.unquote_plus(str(text)).strip().lower()
    text = text.replace("<person>", "person")
    for url in _URLS:
        text = url.sub("", text)
    if _HAVE_BS4:
        with warnings.catch_warnings():  # a caption that looks like a file name or URL is still a caption
            warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
            text = BeautifulSoup(text, features="html.parser").get_text()
    else:
        text = re.sub(r"<[^>]+>", " ", text)
    text = _HANDLE.sub("", text)
    text = _CJK.sub("", text)
    text = _DASHES.sub("-", text)
    text = _DOUBLE_QUOTES.sub('"', text)
    text = _SINGLE_QUOTES.sub("'", text)
    text = _HTML_QUOT.sub("", text)
    text = _HTML_AMP.sub("", text)
    text = _IP.sub(" ", text)
    text = _ARTICLE_ID.sub("", text)
    text = _NEWLINE_ESCAPE.sub(" ", text)
    text = _HASH_ID.sub("", text)
    text = _LONG_NUMBER.sub("", text)
    text = _FILENAME.sub("", text)
    text = _REPEATED_QUOTES.sub('"', text)
    text = _REPEATED_DOTS.sub(" ", text)
    text = _BAD_PUNCTUATION.sub(" ", text)
    text = _SPACED_DOT.sub(" ", text)
    # Words glued by dashes or underscores (tags such as "red-dress_summer") become separate words.
    if len(re.findall(r"[-_]", text)) > 3:
        text = re.sub(r"[-_]", " ", text)
    if _HAVE_FTFY:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    for pattern in (*_CODES, *_BOILERPLATE):
        text = pattern.sub("", text)
    text = _ALNUM_IDS.sub(" ", text)
    text = _SIZES.sub("", text)
    text = _SPACED_COLON.sub(": ", text)
    text = _GLUED_PUNCTUATION.sub(r"\1 ", text)
    text = _SPACES.sub(" ", text)  # not stripped before the quote rule: the official cleaner's strip() is a no-op
    text = _ENCLOSING_QUOTES.sub(r"\1", text)
    text = _LEADING_PUNCTUATION.sub("", text)
    text = _TRAILING_PUNCTUATION.sub("", text)
    text = _DOT_WORD.sub("", text)
    return text.strip()


def clean_caption(text: str) -> str:
    """The official T5 caption cleaning: `_clean_once` twice (the second pass catches what the first exposed)."""
    return _clean_once(_clean_once(text))


def simple_clean(text: str) -> str:
    """diffusers' behaviour with clean_caption=False: lowercase and strip."""
    return text.lower().strip()
