"""Run under torchrun by test_train: FSDP2 bf16 models under CPU autocast against one process's.

Writes one JSON line per model kind to rank-<r>.jsonl in the folder given as its argument (two ranks
printing to one stdout can interleave within a line): the dtype of block 0's input in each model, and the
largest difference of their outputs; then, once the group is gone, the names of the rank's threads left
(threads-rank-<r>.json). The one-process model holds fp32 weights that bf16 represents exactly, as the
bf16 copies FSDP's policy makes of them; timesteps are floats (a flow objective's), which bf16 would round.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from helpers import randomize_, thread_names, varied_mask

from pixart.model import TINY_MS, PixArt
from pixart.model.dit import DiT, DiTConfig
from pixart.train.distributed import init_distributed, let_go_of_the_group, wrap_model

world = init_distributed("cpu")
results = Path(sys.argv[1]) / f"rank-{world.rank}.jsonl"
x, t = torch.randn(2, 4, 8, 8), torch.tensor([999.25, 10.5])
y, mask = torch.randn(2, 6, TINY_MS.caption_channels), varied_mask(2, 6, [6, 3])
micro = {"img_hw": torch.tensor([[64.0, 48.0]] * 2), "aspect_ratio": torch.tensor([0.57, 0.57])}
cases = {
    "pixart-ms": (PixArt(TINY_MS), lambda model: model(x, t, y, mask, **micro)),
    "dit": (
        DiT(DiTConfig(input_size=8, depth=2, hidden_size=32, num_heads=2, num_classes=5)),
        lambda model: model(x, t, torch.tensor([1, 5])),
    ),
}
for kind, (model, call) in cases.items():
    master = randomize_(model, seed=3)
    with torch.no_grad():
        for p in master.parameters():
            p.copy_(p.bfloat16().float())
    sharded = wrap_model(copy.deepcopy(master), world, "fsdp", bf16=True)
    streams: dict[str, str] = {}
    for name, module in (("one", master), ("fsdp", sharded)):
        module.blocks[0].register_forward_pre_hook(
            lambda module, args, name=name, streams=streams: streams.update({name: str(args[0].dtype)})
        )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        difference = (call(master) - call(sharded)).abs().max().item()
    with open(results, "a") as f:
        f.write(json.dumps({"rank": world.rank, "kind": kind, **streams, "difference": difference}) + "\n")
dist.barrier()  # both ranks done with every collective before the group goes (gloo aborted otherwise)
# The sharded models (their mesh and parameter groups) held the group past destroy_process_group, so its
# gloo threads lived on into the interpreter's exit, where one aborted rank 0 in a CI run ("terminate called
# without an active exception"): drop them first, and let go of the group as the trainer does.
del cases, model, call, master, sharded, module
let_go_of_the_group(world, destroy=True)
(Path(sys.argv[1]) / f"threads-rank-{world.rank}.json").write_text(json.dumps(thread_names()))
