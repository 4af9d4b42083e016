"""CLIP score (Hessel et al. 2021, as torchmetrics defines it) with a local transformers CLIP folder.

CLIPScore(I, C) = max(100 * cos(E_I, E_C), 0) for an image I and its caption C, averaged over pairs. E_I and
E_C are CLIPModel's projected image and text embeddings; images go through the folder's own processor
(resize, centre crop, normalise) and captions are truncated at the text model's position limit (77 tokens
for OpenAI's CLIPs). torchmetrics' code clamps the mean rather than each pair; the two agree whenever no
pair has a negative cosine, which is the normal case for a real CLIP.

Nothing is downloaded: the folder is loaded with local_files_only=True.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from pixart.weights import WeightsError

if TYPE_CHECKING:
    from transformers import CLIPModel, ProcessorMixin

CLIP_HINT = (
    "--clip DIR is required for the CLIP score; download a transformers CLIP folder on a connected machine, e.g. "
    "`huggingface-cli download openai/clip-vit-large-patch14 --local-dir clip-vit-large-patch14` (torchmetrics' "
    "default CLIP), and pass its path"
)


def _embedding(output: Any) -> torch.Tensor:
    """get_*_features returns the embedding (transformers 4) or an output whose pooler_output is it (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipScorer:
    """A CLIPModel and its processor that score (image, caption) pairs."""

    def __init__(self, model: CLIPModel, processor: ProcessorMixin, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = torch.device(device)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> ClipScorer:
        """CLIPModel + AutoProcessor from a local folder; FileNotFoundError or WeightsError saying why not."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"--clip: no folder at {folder}. {CLIP_HINT}")
        from transformers import AutoProcessor, CLIPModel
        from transformers.utils import logging as transformers_logging

        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # its load report of another model's folder: said below
        try:
            loaded: Any = CLIPModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as error:  # missing config, weights or tokenizer files, or another architecture
            raise WeightsError(
                f"--clip {folder} is not a transformers CLIP folder ({type(error).__name__}: {error}). {CLIP_HINT}"
            ) from error
        finally:
            transformers_logging.set_verbosity(verbosity)
        model, loading = loaded
        # Another model's folder whose shapes do not clash loaded with a warning and random CLIP weights: it
        # scored noise, or failed at the first images, after generation had started
        if why := _not_clip(model, loading.get("missing_keys") or [], processor):
            raise WeightsError(f"--clip {folder} is not a transformers CLIP folder: {why}. {CLIP_HINT}")
        return cls(model, processor, device)

    def position_limit(self) -> int:
        """The most tokens (start and end included) the text model reads of a caption: 77 for OpenAI's CLIPs."""
        return int(self.model.config.text_config.max_position_embeddings)

    def count_truncated(self, captions: list[str]) -> int:
        """How many of `captions` are longer than the position limit: each is scored on its first tokens only
        (dense, PixArt-style prompts often are)."""
        limit = self.position_limit()
        # verbose=False: the tokenizer's "longer than the specified maximum ... indexing errors" is for a model
        # call, and scoring truncates
        return sum(len(ids) > limit for ids in self.processor.tokenizer(captions, verbose=False)["input_ids"])

    @torch.no_grad()
    def pair_scores(self, images: list[Image.Image], captions: list[str]) -> torch.Tensor:
        """(N,) float64: 100 * cos(image embedding, caption embedding) per pair, before clamping."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images for {len(captions)} captions")
        limit = self.position_limit()
        text = self.processor(text=captions, return_tensors="pt", padding=True, truncation=True, max_length=limit)
        pixels = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        text_embedding = _embedding(
            self.model.get_text_features(
                input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)
            )
        )
        image_embedding = _embedding(self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device)))
        cosine = torch.nn.functional.cosine_similarity(image_embedding.double(), text_embedding.double(), dim=-1)
        return (100 * cosine).cpu()


def _not_clip(model: CLIPModel, missing: list[str], processor: ProcessorMixin) -> str:
    """Why a loaded folder is not a CLIP after all; "" if it is one."""
    if model.config.model_type != "clip":
        return f"its config is a {model.config.model_type!r} model's"
    if missing:
        return f"{len(missing)} of CLIP's weights are missing from it (e.g. {sorted(missing)[0]})"
    if getattr(processor, "image_processor", None) is None:
        return "it has no image processor"
    return ""


def clip_score(pair_scores: torch.Tensor) -> float:
    """The CLIP score of a set: each pair's 100 * cos clamped at 0, averaged."""
    return float(pair_scores.clamp(min=0).mean())
