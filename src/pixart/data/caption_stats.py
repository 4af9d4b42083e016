"""Caption statistics, to compare the concept density of caption sets (alt-text vs. dense captions).

Per caption field: how many captions, their length in whitespace tokens and (given tokenizers, e.g. of
T5 or MiniLM) in model tokens with the share longer than the encoder keeps, the vocabulary (distinct
lowercased words), and, when spaCy with an English model is installed, nouns per caption and distinct
nouns (the measure of the PixArt-alpha paper's caption comparison). Without spaCy the noun columns
say so instead of guessing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixart.data.images import ImageSkipped
from pixart.data.items import Inputs, has_text, is_utf8

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# A word: letters or digits, with inner apostrophes ("don't", "cat's"); punctuation and "_" split words.
WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
SPACY_MODEL = "en_core_web_sm"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.txt")
NOUN_TAGS = frozenset({"NOUN"})  # common nouns: the concepts; proper nouns (PROPN) are mostly names
# A transformers tokenizer, as field_stats calls it: captions -> a mapping holding "input_ids" (one list per caption).
Tokenizer = Callable[..., Mapping[str, Any]]


@dataclass
class FieldStats:
    field: str
    captions: int
    missing: int  # inputs without a usable caption in this field
    words_per_caption: float  # whitespace tokens
    vocabulary: int  # distinct lowercased words
    # dataclasses.field in full: in this class body the name `field` is the attribute above.
    tokens_per_caption: dict[str, float] = dataclasses.field(default_factory=dict)  # tokenizer name -> mean tokens
    over_max_length: dict[str, float] = dataclasses.field(default_factory=dict)  # name -> share cut by max_length
    nouns_per_caption: float | None = None
    distinct_nouns: int | None = None


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def load_spacy(model: str = SPACY_MODEL) -> tuple[Any, str | None]:
    """(nlp, None) if spaCy and the English model load, else (None, a note saying what is missing)."""
    try:
        import spacy
    except ImportError:
        return None, "nouns: spaCy is not installed (pip install spacy; python -m spacy download en_core_web_sm)"
    try:
        return spacy.load(model, disable=["parser", "ner", "lemmatizer"]), None
    except OSError:
        return None, f"nouns: spaCy has no model {model!r} (python -m spacy download {model})"


def load_tokenizer(source: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer from a local encoder folder (T5, MiniLM...), or 'minilm' for the bundled MiniLM."""
    from transformers import AutoTokenizer

    from pixart.encoders import minilm_folder

    folder = minilm_folder() if str(source) == "minilm" else Path(source)
    # Checked here: transformers takes a path that is not a folder for a hub name (and blames the network).
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}: pass a local encoder folder (T5, MiniLM) or 'minilm'")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer files in {folder} (one of {', '.join(TOKENIZER_FILES)})")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def field_stats(
    name: str,
    captions: list[str],
    missing: int = 0,
    tokenizers: Mapping[str, Tokenizer] | None = None,
    max_length: int | Mapping[str, int] = 120,
    nlp: Any = None,
    cleaners: Mapping[str, Callable[[str], str]] | None = None,
) -> FieldStats:
    """Statistics of one field's captions; `tokenizers` maps a column name to a transformers tokenizer,
    `max_length` is the token count past which a caption is cut (one for all, or per column), `nlp` is
    a spaCy pipeline (see load_spacy) or None, and `cleaners` maps a column to what its encoder does to a
    caption before tokenising it (T5's clean_caption drops URLs and ids: the raw text overstated the cut)."""
    n = len(captions)
    vocabulary = set()
    total_words = 0
    for caption in captions:
        total_words += len(caption.split())
        vocabulary.update(words(caption))
    stats = FieldStats(name, n, missing, total_words / n if n else 0.0, len(vocabulary))
    for label, tokenizer in (tokenizers or {}).items():
        # verbose=False: counting past the model's length is the point, not a mistake to warn of
        clean = (cleaners or {}).get(label)
        texts = [clean(c) for c in captions] if clean else captions
        ids = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"] if n else []
        lengths = [len(row) for row in ids]
        stats.tokens_per_caption[label] = sum(lengths) / n if n else 0.0
        limit = max_length if isinstance(max_length, int) else max_length[label]
        stats.over_max_length[label] = sum(1 for x in lengths if x > limit) / n if n else 0.0
    if nlp is not None:
        nouns = [[t.text.lower() for t in doc if t.pos_ in NOUN_TAGS] for doc in nlp.pipe(captions)]
        stats.nouns_per_caption = sum(map(len, nouns)) / n if n else 0.0
        stats.distinct_nouns = len({noun for found in nouns for noun in found})
    return stats


def collect(inputs: Inputs, fields: Iterable[str]) -> dict[str, tuple[list[str], int]]:
    """Field -> (its usable captions in input order, how many inputs lack one)."""
    fields = list(fields)
    found: dict[str, list[str]] = {name: [] for name in fields}
    for item in inputs.items:
        try:
            row = item.fields()
        except ImageSkipped:
            row = {}
        for name in fields:
            value = row.get(name)
            if has_text(value) and is_utf8(value):
                found[name].append(value.strip())
    return {name: (found[name], len(inputs.items) - len(found[name])) for name in fields}


def format_table(stats: list[FieldStats], max_length: int | Mapping[str, int], note: str | None = None) -> str:
    """A plain-text table, one row per field."""
    labels = sorted({label for s in stats for label in s.tokens_per_caption})
    header = ["field", "captions", "missing", "words/cap", "vocabulary"]
    for label in labels:
        limit = max_length if isinstance(max_length, int) else max_length[label]
        header += [f"tokens/cap ({label})", f">{limit} tok ({label})"]
    header += ["nouns/cap", "distinct nouns"]
    rows = []
    for s in stats:
        row = [s.field, str(s.captions), str(s.missing), f"{s.words_per_caption:.1f}", str(s.vocabulary)]
        for label in labels:
            if label in s.tokens_per_caption:
                row += [f"{s.tokens_per_caption[label]:.1f}", f"{100 * s.over_max_length[label]:.0f}%"]
            else:
                row += ["-", "-"]
        row += [
            "-" if s.nouns_per_caption is None else f"{s.nouns_per_caption:.1f}",
            "-" if s.distinct_nouns is None else str(s.distinct_nouns),
        ]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:  # the field name left-aligned, numbers right-aligned
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if note:
        lines.append(note)
    return "\n".join(lines)
