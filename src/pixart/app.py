"""The web app behind `pixart serve`: a Gradio page over the same TextToImage as `pixart generate`.

The page only translates widgets into a `Settings`; sizes, samplers and steps are checked by
TextToImage itself, so the page and the command accept and refuse the same things. Errors a user can
fix are answered in the page's notice, never as a traceback. Images are written with `outputs.ImageWriter`
batch by batch, so what the gallery and the download give carries its settings in the PNG, and a server
stopped mid-request keeps the batches it finished.
"""

from __future__ import annotations

import functools
import html
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from pixart.data.buckets import closest_bucket
from pixart.data.buckets import parse_size as parse_height_width
from pixart.diffusion.schedulers import SAMPLERS
from pixart.generate import TextToImage
from pixart.generation_settings import GeneratedImage, GenerationError, Settings, check_size
from pixart.outputs import ImageWriter, is_request_folder
from pixart.sample import SamplingStopped

MAX_IMAGES = 8
# Far past what any text encoder reads (T5: 120 tokens, a few hundred characters): a page open to others
# must not let one request hold the only slot and write megabytes of metadata with every image.
MAX_PROMPT_CHARS = 10_000
_in_flight = [0]  # requests being made now, in gradio's worker threads
_in_flight_lock = threading.Lock()
# One generation at a time in the process, whatever gradio counts: a request cancelled through its API
# freed gradio's slot while its thread sampled on, and the next ran beside it (twice the GPU memory).
_one_generation = threading.Lock()


@contextmanager
def _making() -> Iterator[None]:
    with _in_flight_lock:
        _in_flight[0] += 1
    try:
        yield
    finally:
        with _in_flight_lock:
            _in_flight[0] -= 1


def _counted(method: Callable[..., Reply]) -> Callable[..., Reply]:
    """A request method counted while it runs (generating())."""

    @functools.wraps(method)
    def counted(*args: Any, **kwargs: Any) -> Reply:
        with _making():
            return method(*args, **kwargs)

    return counted


def generating() -> bool:
    """Whether a request is being made now: a stopping server must not wait for it (pixart.cli.serve)."""
    return _in_flight[0] > 0


# The whole numbers a browser's number (a float64) holds exactly: the page's seeds. The CLI takes up to
# 2**63 - 1 (torch's range); an image made there with a larger seed is remade with the CLI.
SEED_RANGE = 2**53


def whole_number(value: object, what: str) -> int:
    """A count, seed or step number from the page or its API (which sends floats, NaN included, or through
    the API whatever JSON holds: "10" was a TypeError and a bare error event)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GenerationError(f"{what} must be a number, got {shown_value(value)}")
    if not (math.isfinite(value) and value == int(value)):
        raise GenerationError(f"{what} must be a whole number, got {value}")
    if abs(value) >= 2**63:  # 1e308 is whole too: said as such, not as its 309 digits
        raise GenerationError(f"{what} is far too large ({value:.3g})")
    return int(value)


def shown_value(value: object) -> str:
    """A value the API sent, as JSON, cut short for a notice."""
    return shorten(json.dumps(value, default=repr), 40)


def real_number(value: object, what: str) -> float:
    """The guidance from the page or its API: a number (finite or not: Settings says which it takes)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GenerationError(f"{what} must be a number, got {shown_value(value)}")
    return float(value)


@dataclass
class Reply:
    """What one request shows: gallery items (path, caption), files to download, the notice, the seed used."""

    gallery: list[tuple[str, str]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    notice: str = ""
    details: str = ""
    seed: int | None = None


def aspect_choices(pipe: TextToImage) -> list[tuple[str, str]]:
    """(label, key) for each bucket, labelled like '1.0 (32x32)' so the user sees the size they get."""
    return [(f"{key} ({h}x{w})", key) for key, (h, w) in pipe.table.items()]


def sampler_choices(pipe: TextToImage) -> list[str]:
    """The samplers for the model's objective, plus the folder's own scheduler when it ships one."""
    names = [name for name, sampler in SAMPLERS.items() if sampler.objective == pipe.spec.objective]
    return [*names, "folder"] if pipe.scheduler_folder is not None else names


def default_steps(pipe: TextToImage, sampler: str | None) -> int:
    try:
        return pipe.resolve_sampler(Settings(sampler=sampler))[1]
    except GenerationError:
        return pipe.resolve_sampler(Settings())[1]


def aspect_ratio(key: str | None) -> str | None:
    """A bucket key ('0.5') as the 'H:W' that Settings.aspect takes: it snaps back to exactly that bucket."""
    return f"{key}:1" if key else None


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    """'HxW' -> (H, W); blank -> (None, None), i.e. use the aspect-ratio bucket."""
    if not text or not text.strip():
        return None, None
    try:
        height, width = parse_height_width(text)
    except ValueError as error:
        raise GenerationError(str(error)) from None
    check_size(height, width)
    return height, width


def literal(text: str) -> str:
    """User text (a prompt, a path, an error's words) as HTML showing it as typed, on one line. The notices
    and the details table are HTML, not Markdown: Markdown's escapes showed in links it made of URLs
    ("https://example\\.com"), and it decoded entities ("&amp;" showed as "&")."""
    return html.escape(" ".join(text.split()))


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def settings_line(result: GeneratedImage) -> str:
    s = result.settings
    return (
        f"seed {result.seed} · {s['sampler']} · {s['steps']} steps · cfg {s['cfg_scale']} · "
        f"{s['size'][0]}x{s['size'][1]}"
    )


def details_table(results: list[GeneratedImage]) -> str:
    """An HTML table of each image's prompt and settings."""
    head = "".join(f"<th>{name}</th>" for name in ("#", "prompt", "seed", "sampler", "steps", "cfg", "size (HxW)"))
    rows = [f"<tr>{head}</tr>"]
    for index, r in enumerate(results):
        s = r.settings
        prompt = literal(shorten(r.prompt)) if r.prompt.strip() else "<i>(empty: unconditional)</i>"
        cells = (index, prompt, r.seed, s["sampler"], s["steps"], s["cfg_scale"], f"{s['size'][0]}x{s['size'][1]}")
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def notices(pipe: TextToImage, prompt: str, results: list[GeneratedImage]) -> list[str]:
    found = []
    if not prompt.strip():
        found.append("The prompt is empty: the image was generated <b>unconditionally</b> (it follows no text).")
    dropped = results[0].dropped_tokens if results else 0
    if dropped:
        limit = pipe.text_encoder.max_length
        found.append(
            f"The prompt is longer than {limit} tokens: <b>{dropped} tokens were dropped</b> "
            f"(the image follows the first {limit} only)."
        )
    return found


def failed(notice: str, seed: int | None, kept: list[Path]) -> Reply:
    """The reply to a request that failed; one that failed after its first batch says where those images
    are and offers them (they were written, and the page said nothing of them)."""
    if kept:
        notice += f" (the {len(kept)} image(s) made before it are in {literal(str(kept[0].parent))})"
    return Reply(notice=notice, seed=seed, files=[str(p) for p in kept])


def last_request_number(out_dir: Path) -> int:
    """The highest numbered request folder ('00042') in out_dir, 0 when there is none."""
    if not out_dir.is_dir():
        return 0
    return max((int(p.name) for p in out_dir.iterdir() if is_request_folder(p)), default=0)


class Studio:
    """Requests -> images for one loaded model; writes each request's PNGs in its own folder."""

    def __init__(
        self, pipe: TextToImage, out_dir: str | Path, *, model_name: str | None = None, extra: dict | None = None
    ):
        self.pipe = pipe
        self.out_dir = Path(out_dir)
        self.model_name = model_name
        self.extra = extra  # more of what remakes an image (--vae, --text-encoder), saved with each one
        # A server restarted on the same --out continues the numbering instead of writing into old folders.
        self.count = last_request_number(self.out_dir)
        self._stop = threading.Event()  # set: the request being made stops at its next sampler step
        self._making_for: str | None = None  # the browser session whose request is being made

    def stop(self, session: str | None = None) -> bool:
        """Stop the request being made at its next sampler step (its finished images are kept): `session`'s
        only (its Stop button, its tab closed), or whichever is being made with None. Whether one was."""
        if not generating() or (session is not None and session != self._making_for):
            return False
        self._stop.set()
        return True

    def writes_to(self, path: str | Path) -> bool:
        """Whether `path` lies in --out (an error there is one of saving the images)."""
        return Path(path).resolve().is_relative_to(self.out_dir.resolve())

    def next_folder(self) -> Path:
        """A new request folder, created here: one that exists already (another server sharing --out made
        it) is skipped, so no request writes into another's folder."""
        while True:
            self.count += 1
            folder = self.out_dir / f"{self.count:05d}"
            try:
                folder.mkdir(parents=True)
            except FileExistsError:
                continue
            return folder

    def make_and_write(
        self, prompts: list[str], settings: Settings, seed: int, count: int, progress: bool, written: list[Path]
    ) -> list[GeneratedImage]:
        """Generate and write each batch as it comes (into `written`), in a request folder made at the first
        (a refused request makes none): a server stopped mid-request kept nothing, though batches were done."""
        results: list[GeneratedImage] = []
        writer: ImageWriter | None = None
        try:
            batches = self.pipe.generate_batches(
                prompts, settings, seed=seed, num_images=count, progress=progress, stop=self._stop.is_set
            )
            for batch in batches:
                writer = writer or ImageWriter(self.next_folder(), model=self.model_name, extra=self.extra)
                for result in batch:
                    written.append(writer.write(result))
                results += batch
            assert writer is not None  # check_request asks for at least one image
            writer.finish()
        except BaseException:
            if writer is not None and writer.out_dir.is_dir() and not any(writer.out_dir.iterdir()):
                writer.out_dir.rmdir()  # a first write that failed (a full disk): no empty request folder
            raise
        return results

    @_counted
    def request(
        self,
        prompt: str | None,
        negative: str | None,
        aspect: str | None,
        size: str | None,
        sampler: str | None,
        steps: float | None,
        cfg: float | None,
        seed: float | None,
        random_seed: bool,
        num_images: float | None,
        *,
        progress: bool = False,
        session: str | None = None,
    ) -> Reply:
        """One request of the page (or its API); `session` is the browser's, which stop() names."""
        prompt = "" if prompt is None else prompt  # else checked below: 0 or [] is no empty prompt
        started = time.time()
        used_seed = None
        paths: list[Path] = []  # written so far: a failure after the first batch says where they are
        try:
            texts = {"prompt": prompt, "negative prompt": negative, "aspect": aspect, "size": size, "sampler": sampler}
            for what, value in texts.items():  # the page sends text; its API whatever JSON holds
                if value is not None and not isinstance(value, str):
                    raise GenerationError(f"the {what} must be text, got {shown_value(value)}")
            for what, text in (("prompt", prompt), ("negative prompt", negative or "")):
                if len(text) > MAX_PROMPT_CHARS:
                    raise GenerationError(
                        f"the {what} holds {len(text):,} characters; this page takes {MAX_PROMPT_CHARS:,} at most "
                        "(the text encoder reads the first few hundred)"
                    )
            count = 1 if num_images is None else whole_number(num_images, "the number of images")
            if not 1 <= count <= MAX_IMAGES:
                raise GenerationError(f"the number of images must lie in 1..{MAX_IMAGES}, got {count}")
            # image k takes seed + k, and every seed written must be one this page takes back
            last = SEED_RANGE - count
            if random_seed:
                seed = random.randint(0, last)
            elif seed is None:  # a cleared seed box: it drew a random seed unasked
                raise GenerationError("give a seed, or tick Random seed")
            else:
                seed = whole_number(seed, "the seed")
            if not 0 <= seed <= last:
                raise GenerationError(f"the seed must lie in 0..{last} for {count} image(s) (image k takes seed + k)")
            used_seed = seed
            height, width = parse_size(size)
            settings = Settings(
                negative=negative,  # generate() reads a blank one as none (the null caption), as in the CLI
                height=height,
                width=width,
                aspect=None if height else aspect_ratio(aspect),
                sampler=sampler or None,
                steps=None if steps is None else whole_number(steps, "steps"),
                cfg_scale=None if cfg is None else real_number(cfg, "the guidance"),
            )
            # Not waited for: gradio runs one request at a time, so a held lock is a request cancelled through
            # its API whose thread still samples; waiting, each cancelled request's successor queued unseen.
            if not _one_generation.acquire(blocking=False):
                raise GenerationError("an earlier request, cancelled, is still being made: try again when it ends")
            try:
                self._stop.clear()
                self._making_for = session
                results = self.make_and_write([prompt], settings, used_seed, count, progress, paths)
            finally:
                self._making_for = None
                _one_generation.release()
        except GenerationError as error:
            return failed(f"<b>Cannot generate:</b> {literal(str(error))}", used_seed, paths)
        except SamplingStopped:
            return failed("<b>Stopped</b> as asked", used_seed, paths)
        except torch.OutOfMemoryError:  # the page said a bare "Error"; the server and its model stay up
            why = "<b>Out of GPU memory</b> for this request: ask for fewer images or a smaller size"
            return failed(why, used_seed, paths)
        except OSError as error:  # a full disk, an --out made read-only: said in the page (it said "Error")
            reason = literal(f"{error.strerror or error}")
            if error.filename and not self.writes_to(error.filename):  # the model's files (a folder moved away)
                why = f"<b>Cannot read</b> {literal(str(error.filename))}: {reason}"
            else:
                why = f"<b>Cannot save the images</b> in {literal(str(self.out_dir))}: {reason}"
            return failed(why, used_seed, paths)
        lines = [
            f"Generated {len(results)} image(s) in {time.time() - started:.1f}s.",
            *notices(self.pipe, prompt, results),
        ]
        caption = shorten(prompt, 60) if prompt.strip() else "(unconditional)"  # plain text, not Markdown
        return Reply(
            gallery=[(str(p), f"{settings_line(r)} · {caption}") for p, r in zip(paths, results)],
            files=[str(p) for p in paths],
            notice="".join(f"<p>{line}</p>" for line in lines),
            details=details_table(results),
            seed=used_seed,
        )


def build_app(
    pipe: TextToImage, out_dir: str | Path, *, model_name: str | None = None, extra: dict | None = None
) -> gr.Blocks:
    """The page; call `.queue(...)` and `.launch(...)` on it (see pixart.cli.serve). `extra` goes into each
    image's metadata beside the model's name, as `pixart generate` writes it."""
    studio = Studio(pipe, out_dir, model_name=model_name, extra=extra)
    square, _ = closest_bucket(1, 1, pipe.table)
    sampler = pipe.default_sampler()
    # Gradio copies every image it shows into its cache: drop copies older than a day, hourly.
    with gr.Blocks(title="PixArt", delete_cache=(3600, 86400)) as page:
        # HTML, the model's path escaped: in a Markdown code span a backtick in it ended the span
        model = f"<code>{html.escape(model_name)}</code>" if model_name else "the loaded model"
        gr.HTML(f"<h1>PixArt</h1><p>Text to image with {model}.</p>", elem_id="title")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt", placeholder="empty: unconditional")
                negative = gr.Textbox(
                    label="Negative prompt", elem_id="negative", placeholder="empty: the model's null caption"
                )
                aspect = gr.Dropdown(aspect_choices(pipe), value=square, label="Aspect ratio (H/W)", elem_id="aspect")
                size = gr.Textbox(label="Custom size HxW (optional, overrides the aspect ratio)", elem_id="size")
                samplers = gr.Dropdown(sampler_choices(pipe), value=sampler, label="Sampler", elem_id="sampler")
                # No precision: gradio rounded the value first (2.5 steps ran as 2) and failed on NaN with a
                # bare "Error"; whole_number refuses both with a notice.
                steps = gr.Number(
                    value=default_steps(pipe, sampler),
                    step=1,
                    label="Steps (1..1000; 999 for dpm-solver++ and sa-solver)",
                    elem_id="steps",
                )
                # a model.json whose default lies above 20 had every request refused by the slider's bounds
                top = max(20.0, pipe.spec.cfg_scale)
                cfg = gr.Slider(0, top, value=pipe.spec.cfg_scale, step=0.5, label="Guidance (cfg)", elem_id="cfg")
                with gr.Row():
                    seed = gr.Number(value=0, step=1, label="Seed (image k uses seed + k)", elem_id="seed")
                    random_seed = gr.Checkbox(value=True, label="Random seed", elem_id="random-seed")
                num_images = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Number of images", elem_id="num-images")
                with gr.Row():
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", elem_id="stop")
            with gr.Column(scale=1):
                notice = gr.HTML(elem_id="notice")
                gallery = gr.Gallery(label="Images", columns=2, object_fit="contain", elem_id="gallery")
                details = gr.HTML(elem_id="details")
                files = gr.File(
                    label="Download (PNG with settings in its metadata)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="files",
                )

        # Gradio finds the progress bar by this default; tracking tqdm shows the sampler's steps in the page.
        # Named one by one: gradio passes its Request (the browser's session) to a parameter, not after *args
        def on_generate(
            prompt_text: str,
            negative_text: str,
            aspect_key: str,
            size_text: str,
            sampler_name: str,
            step_count: float,
            guidance: float,
            seed_value: float,
            draw_seed: bool,
            image_count: float,
            request: gr.Request,
            progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
        ) -> tuple:
            reply = studio.request(
                prompt_text,
                negative_text,
                aspect_key,
                size_text,
                sampler_name,
                step_count,
                guidance,
                seed_value,
                draw_seed,
                image_count,
                progress=True,
                session=request.session_hash,
            )
            # a request refused before its seed was drawn keeps the seed box as it was (None emptied it)
            shown_seed = reply.seed if reply.seed is not None else gr.update()
            return reply.gallery, reply.files or None, reply.notice, reply.details, shown_seed

        inputs = [prompt, negative, aspect, size, samplers, steps, cfg, seed, random_seed, num_images]
        outputs = [gallery, files, notice, details, seed]
        for trigger in (button.click, prompt.submit):  # one queue for both: one generation at a time in all
            trigger(
                on_generate, inputs, outputs, concurrency_limit=1, concurrency_id="generate", show_progress="minimal"
            )

        # A request runs on after its browser has gone (gradio cannot interrupt it): the one slot stayed busy
        # until a closed tab's 8 large images were made. Stop, or closing the tab, ends it at the next step.
        def stop_own(request: gr.Request) -> None:
            if request.session_hash:  # without one, stop() would end whichever request is being made
                studio.stop(request.session_hash)

        stop.click(stop_own, None, None, queue=False)
        page.unload(stop_own)
        # Picking another sampler proposes its own default step count.
        samplers.change(lambda name: default_steps(pipe, name), samplers, steps, queue=False)
    return page
