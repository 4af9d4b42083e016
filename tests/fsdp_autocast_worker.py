"""Run under torchrun by test_train: an FSDP2 bf16 PixArt under CPU autocast against one process's model.

Prints one JSON line per rank: the dtype of block 0's input in each model, and the largest difference of
their outputs. The one-process model holds fp32 weights that bf16 represents exactly, as the bf16 copies
FSDP's policy makes of them; timesteps are floats (a flow objective's), which bf16 would round.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
from helpers import randomize_, varied_mask

from pixart.model import TINY_MS, PixArt
from pixart.train.distributed import init_distributed, wrap_model

world = init_distributed("cpu")
master = randomize_(PixArt(TINY_MS), seed=3)
with torch.no_grad():
    for p in master.parameters():
        p.copy_(p.bfloat16().float())
sharded = PixArt(TINY_MS)
sharded.load_state_dict(master.state_dict())
sharded = wrap_model(sharded, world, "fsdp", bf16=True)
streams: dict[str, str] = {}
for name, model in (("one", master), ("fsdp", sharded)):
    model.blocks[0].register_forward_pre_hook(
        lambda module, args, name=name: streams.update({name: str(args[0].dtype)})
    )
x, t = torch.randn(2, 4, 8, 8), torch.tensor([999.25, 10.5])
y, mask = torch.randn(2, 6, TINY_MS.caption_channels), varied_mask(2, 6, [6, 3])
micro = {"img_hw": torch.tensor([[64.0, 48.0]] * 2), "aspect_ratio": torch.tensor([0.57, 0.57])}
with torch.autocast("cpu", dtype=torch.bfloat16):
    difference = (master(x, t, y, mask, **micro) - sharded(x, t, y, mask, **micro)).abs().max().item()
print(json.dumps({"rank": world.rank, **streams, "difference": difference}), flush=True)
dist.destroy_process_group()
