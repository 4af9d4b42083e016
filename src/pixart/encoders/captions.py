"""Caption cleaning before T5, as the official T5Embedder does it (DeepFloyd IF's cleaner, run twice).

It lowercases; strips URLs, HTML, @handles, CJK characters, IP addresses, long digit runs, file names,
ids and shop boilerplate ("free shipping", "download"...); normalises dashes and quotes; collapses
punctuation and whitespace; then fixes mojibake with ftfy and unescapes HTML entities.

ftfy and BeautifulSoup are optional (the `diffusers` extra installs both). Without them the
fallback is documented and deterministic: HTML tags are removed by a regex and text is not re-encoded.
"""

from __future__ import annotations

import html
import re
import urllib.parse

try:  # optional: better HTML stripping
    from bs4 import BeautifulSoup
except ImportError:  # pragma: no cover - exercised only without the extra
    BeautifulSoup = None
try:  # optional: repairs mojibake ("donâ€™t" -> "don't")
    import ftfy
except ImportError:  # pragma: no cover
    ftfy = None

_URL = re.compile(r"\b(?:https?:|www\.)\S+", re.IGNORECASE)
_BARE_DOMAIN = re.compile(r"\b\S+\.(?:com|net|org|co|ru|info|io|jpg|png|webp|gif|jpeg)(?:/\S*)?\b", re.IGNORECASE)
_HANDLE = re.compile(r"@[\w\d]+\b")
_CJK = re.compile("[\u31c0-\u31ef\u31f0-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4dc0-\u4dff\u4e00-\u9fff]+")
_DASHES = re.compile(
    "[\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40\u301c\u3030"
    "\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d]+"
)
_DOUBLE_QUOTES = re.compile("[`\u00b4\u00ab\u00bb\u201c\u201d\u00a8]")
_SINGLE_QUOTES = re.compile("[\u2018\u2019]")
_HTML_ENTITY_WORDS = re.compile(r"&quot;?|&amp")
_IP = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_ARTICLE_ID = re.compile(r"\d:\d\d\s+$")
_NEWLINE_ESCAPE = re.compile(r"\\n")
_HASH_ID = re.compile(r"#\d{1,3}\b|#\d{5,}\b")
_LONG_NUMBER = re.compile(r"\b\d{6,}\b")
_FILENAME = re.compile(r"[\S]+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)", re.IGNORECASE)
_REPEATED_QUOTES = re.compile(r"[\"']{2,}")
_REPEATED_DOTS = re.compile(r"[\.]{2,}")
_BAD_PUNCTUATION = re.compile(r"[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\/\*]{1,}")
_SPACED_DOT = re.compile(r"\s+\.\s+")
_SHOP_WORDS = re.compile(
    r"\b(?:free\s)?shipping\b|\bfull\s?download\b|\bfree\s?download\b|\bdownload\b|\bclick\b|\bfor\s?sale\b"
    r"|\bworldwide\b",
    re.IGNORECASE,
)
_IMAGE_WORDS = re.compile(r"\bpage\s+\d+\b|\b(?:image|photo|picture)\s+\d+\b", re.IGNORECASE)
_ALNUM_IDS = re.compile(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+\w*\b")
_SIZES = re.compile(r"\b\d{3,4}\s?[x×]\s?\d{3,4}\b")
_SPACES = re.compile(r"\s+")
_ENCLOSING_QUOTES = re.compile(r"^[\"']([\w\W]+)[\"']$")
_LEADING_PUNCTUATION = re.compile(r"^['_,\-:;]+")
_TRAILING_PUNCTUATION = re.compile(r"['_,\-:+]+$")


def _clean_once(text: str) -> str:
    text = urllib.parse.unquote_plus(str(text)).strip().lower()
    text = text.replace("<person>", "person")
    text = _URL.sub("", text)
    text = _BARE_DOMAIN.sub("", text)
    if BeautifulSoup is not None:
        text = BeautifulSoup(text, features="html.parser").get_text()
    else:
        text = re.sub(r"<[^>]+>", " ", text)
    text = _HANDLE.sub("", text)
    text = _CJK.sub("", text)
    text = _DASHES.sub("-", text)
    text = _DOUBLE_QUOTES.sub('"', text)
    text = _SINGLE_QUOTES.sub("'", text)
    text = _HTML_ENTITY_WORDS.sub("", text)
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
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = _SHOP_WORDS.sub("", text)
    text = _IMAGE_WORDS.sub("", text)
    text = _ALNUM_IDS.sub("", text)
    text = _SIZES.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _ENCLOSING_QUOTES.sub(r"\1", text.strip())
    text = _LEADING_PUNCTUATION.sub("", text)
    text = _TRAILING_PUNCTUATION.sub("", text)
    return text.strip()


def clean_caption(text: str) -> str:
    """The official T5 caption cleaning: `_clean_once` twice (the second pass catches what the first exposed)."""
    return _clean_once(_clean_once(text))


def simple_clean(text: str) -> str:
    """diffusers' behaviour with clean_caption=False: lowercase and strip."""
    return text.lower().strip()
