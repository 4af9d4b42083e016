"""Quiet library loading: the progress bars transformers and huggingface_hub draw themselves, off for a while
(`--no-progress`, and the library's progress=False)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def silenced_library_progress_bars() -> Iterator[None]:
    """`--no-progress` reaching the bars transformers and huggingface_hub draw themselves ("Loading weights"
    as a text encoder loads), for one command; afterwards each is as it was, so a caller of main() in the
    same process keeps its bars. huggingface_hub's switch is imported here (15 ms): transformers, imported
    later, reads it at import. Setting HF_HUB_DISABLE_PROGRESS_BARS instead, as before, froze the hub's bars
    off for good in a process that first imported it during the command, and warned at every restore."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hub_was_on = not are_progress_bars_disabled()
    transformers_was_on = _transformers_bars() if "transformers" in sys.modules else None
    disable_progress_bars()
    if transformers_was_on is not None:
        _transformers_bars(False)
    try:
        yield
    finally:
        if hub_was_on:  # off before: the user's HF_HUB_DISABLE_PROGRESS_BARS, say, which stays in force
            enable_progress_bars()
        if "transformers" in sys.modules:  # imported meanwhile: its bars follow the hub's again
            _transformers_bars(hub_was_on if transformers_was_on is None else transformers_was_on)


def _transformers_bars(on: bool | None = None) -> bool:
    """Whether transformers draws its own bars; `on` switches them first (transformers must be imported)."""
    from transformers.utils import logging as transformers_logging

    if on is True:
        transformers_logging.enable_progress_bar()
    elif on is False:
        transformers_logging.disable_progress_bar()
    return transformers_logging.is_progress_bar_enabled()
