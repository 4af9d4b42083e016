"""Rank-0 metrics: JSON lines, TensorBoard when installed, a loss-curve PNG, and model FLOPs for MFU.

Not named logging.py, which would shadow the standard library.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from pixart.files import atomic_write, write_text

# Dense bf16 peaks (FLOP/s) of the GPUs we quote MFU on (performance.md section 0; the NVL parts' from
# NVIDIA's datasheets, half their sparse figure). The first key found in the device name wins: "H100 PCIe"
# and "H100 NVL" before "H100" (the SXM part).
PEAK_BF16 = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989.4e12,
    "H200 NVL": 835e12,
    "H200": 989.4e12,
    "A100": 312e12,
}


def forward_flops(
    hidden: int, depth: int, image_tokens: int, text_tokens: int, caption_channels: int, mlp_hidden: int | None = None
) -> float:
    """PixArt forward FLOPs per image (performance.md 4.1): a multiply-add counts 2. `mlp_hidden` is the MLP's
    width, 4 x hidden (performance.md's 16 n d^2 of the 28) unless a model's mlp_ratio says otherwise."""
    d, n, m = hidden, image_tokens, text_tokens
    w = 4 * d if mlp_hidden is None else mlp_hidden
    # qkv 6, proj 2, cross q 2, cross proj 2 (n d^2 each); MLP 4 n d w; cross kv 4 m d^2; the two attentions
    per_block = 12 * n * d * d + 4 * n * d * w + 4 * m * d * d + 4 * n * n * d + 4 * n * m * d
    caption_projection = 2 * m * (caption_channels * d + d * d)
    return depth * per_block + caption_projection


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def json_line(row: dict) -> str:
    """A row as one line of strict JSON: a non-finite number (a skipped step's grad_norm) as null, where
    Python's NaN and Infinity tokens stopped jq, JavaScript and other strict readers at that line."""
    return json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}) + "\n"


class MetricsWriter:
    """Appends rows to metrics.jsonl (and TensorBoard); only the main rank writes.

    A run resumed from the checkpoint of step `resumed_at` logs the steps after it again, so their rows
    go from both (TensorBoard's purge_step), and so does a last row cut off mid-write by a crash.
    """

    def __init__(self, run_dir: Path, enabled: bool, resumed_at: int = 0):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tensorboard = None
        if not enabled:
            return
        self.keep_until(resumed_at)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_at + 1)
        except ImportError:  # TensorBoard is optional
            self.tensorboard = None

    def keep_until(self, step: int) -> None:
        """Drop the rows of steps after `step`, and a last row a crash left half-written."""
        if not self.path.is_file():
            return
        text = self.path.read_text()
        kept = [row for row in parse_rows(text, self.path) if row.get("step", 0) <= step]
        laid_out = "".join(json_line(r) for r in kept)  # the rows as write() lays them out
        if laid_out != text:
            write_text(self.path, laid_out)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json_line(row))
        if self.tensorboard is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and key != "step":
                    self.tensorboard.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl. A last line without its newline that does not parse is a row a crash
    cut off mid-write, and is left out; any other line that does not parse is an error naming it."""
    return parse_rows(path.read_text(), path) if path.is_file() else []


def parse_rows(text: str, path: Path) -> list[dict]:
    """read_metrics on the text of `path`."""
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # no newline after it: the write never finished
                break
            raise ValueError(f"{path}, line {number}: not a JSON row ({error}); remove or fix that line") from error
    return rows


def plot_loss(rows_by_stage: dict[str, list[dict]], out: Path, title: str = "training loss") -> Path:
    """One loss curve per stage (steps offset so stages follow each other), saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    offset = 0
    for stage, rows in rows_by_stage.items():
        rows = [r for r in rows if isinstance(r.get("loss"), int | float)]  # null: a non-finite window
        if not rows:
            continue
        steps = [offset + r["step"] for r in rows]
        marker = "o" if len(rows) < 3 else None  # a line through one point draws nothing (a short run logs once)
        ax.plot(steps, [r["loss"] for r in rows], label=stage, linewidth=1.2, marker=marker)
        offset = steps[-1]
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(rows_by_stage) > 1:
        ax.legend()
    fig.tight_layout()
    # whole or absent, as every file a command writes
    atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format=Path(out).suffix.lstrip(".") or "png"))
    plt.close(fig)
    return out
