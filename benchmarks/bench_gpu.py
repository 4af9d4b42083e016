"""PixArt-XL/2 on one GPU, ours against diffusers' PixArtTransformer2DModel with the same weights and inputs.

Per resolution (256, 512, 1024 px): a bf16-autocast training step (fp32 master weights, fused AdamW for
both) and a no-grad bf16 forward, alternating the two implementations after a warm-up, median of the
repeats, with samples/s, TFLOP/s and MFU from pixart.train.metrics.forward_flops (training = 3 x forward,
120 caption tokens). Then 1024 px, 20 DPM-Solver++ steps with guidance at batch 1, through the same
sampling loop, so the difference is the transformer. With --compile, ours also compiled per block (as
the trainer's compile=true and `pixart generate --compile` on a GPU), and in sampling each block
with its own CUDA graph too; the compiled ratios are then against diffusers eager, as its pipeline runs,
unless --compile-diffusers compiles diffusers' blocks too (the like-for-like figure).

    python benchmarks/bench_gpu.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext

import torch

from pixart.model.pixart import XL_2, PixArt
from pixart.train.metrics import forward_flops, peak_flops
from pixart.weights.keys import to_diffusers

BATCH = {256: 64, 512: 16, 1024: 4}
TOKENS = 120


class DiffusersAsOurs(torch.nn.Module):
    """diffusers' model behind our call signature, so both run through the same sampling loop."""

    def __init__(self, model, config):
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, x, t, y, mask=None, img_hw=None, aspect_ratio=None):
        if self.config.micro_conditions:
            added = {
                "resolution": img_hw.to(x.device, x.dtype),
                "aspect_ratio": aspect_ratio.reshape(-1, 1).to(x.device, x.dtype),
            }
        else:
            added = {"resolution": None, "aspect_ratio": None}
        return self.model(
            x, encoder_hidden_states=y, timestep=t, encoder_attention_mask=mask, added_cond_kwargs=added
        ).sample


def diffusers_twin(ours: PixArt, device: str = "cuda"):
    import diffusers

    from pixart.weights.configs import diffusers_config_from_ours

    config = {k: v for k, v in diffusers_config_from_ours(ours.config).items() if not k.startswith("_")}
    with torch.device(device):
        theirs = diffusers.PixArtTransformer2DModel(**config)
    state = {k: v for k, v in ours.state_dict().items() if k != "y_embedder.y_embedding"}
    theirs.load_state_dict(to_diffusers(state, ours.config.depth, ours.config.micro_conditions), strict=True)
    return theirs


def inputs(config, batch: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    side = config.input_size
    x = torch.randn(batch, 4, side, side, device="cuda", generator=g)
    t = torch.randint(0, 1000, (batch,), device="cuda", generator=g)
    y = torch.randn(batch, TOKENS, 4096, device="cuda", generator=g)
    lengths = torch.randint(8, TOKENS + 1, (batch,), device="cuda", generator=g)
    mask = (torch.arange(TOKENS, device="cuda")[None] < lengths[:, None]).long()
    hw = torch.tensor([[side * 8.0, side * 8.0]], device="cuda").repeat(batch, 1)
    ar = torch.ones(batch, device="cuda")
    target = torch.randn(batch, 8, side, side, device="cuda", generator=g)
    return x, t, y, mask, hw, ar, target


def training_step(model, optimizer, batch, autocast: bool = True):
    """A step on `inputs(...)`: bf16-autocast forward, MSE, backward, AdamW; returns the callable.
    autocast=False runs the model in whatever dtype its parameters and inputs have."""
    x, t, y, mask, hw, ar, target = batch

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = model(x, t, y, mask, img_hw=hw, aspect_ratio=ar)
        loss = (out.float() - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def cuda_time(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000


def alternate(fns, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        for fn in fns:
            fn()
    torch.cuda.synchronize()
    times = [[] for _ in fns]
    for repeat in range(repeats):
        order = list(enumerate(fns))
        for i, fn in order if repeat % 2 == 0 else order[::-1]:  # each goes first in turn
            times[i].append(cuda_time(fn))
    return [statistics.median(t) for t in times]


class ClonedOutput(torch.nn.Module):
    """A block whose output is copied out of its CUDA graph. The 28 blocks share one graph, so without
    the copy block i + 1's replay overwrites block i's output while it is still block i + 1's input
    (ninth session: "accessing tensor output of CUDAGraphs that has been overwritten")."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args):
        return self.block(*args).clone()

    def __getattr__(self, name: str):
        """The block's own parts (prepare_captions reads each block's cross_attn) reach through the wrapper."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.block, name)


@contextmanager
def blocks_compiled(model: torch.nn.Module, clone_outputs: bool = False, blocks: str = "blocks", **compile_options):
    """Run `model` with each block compiled (one graph serves all 28), then give it its eager blocks back.

    torch.compile wrappers of the same blocks: `compile=true` in the trainer compiles them in place
    (pixart.model.regional), which has no undo. Compiling per block takes seconds where the whole model
    takes minutes, at the same step time. clone_outputs wraps each compiled block in ClonedOutput. `blocks`
    names the model's list of blocks: diffusers' is `transformer_blocks` (--compile-diffusers).
    """
    eager_blocks = getattr(model, blocks)
    compiled = [torch.compile(block, **compile_options) for block in eager_blocks]
    setattr(model, blocks, torch.nn.ModuleList(ClonedOutput(block) if clone_outputs else block for block in compiled))
    try:
        yield
    finally:
        setattr(model, blocks, eager_blocks)


@contextmanager
def compiled_pair(ours: PixArt, theirs: DiffusersAsOurs, with_theirs: bool):
    """Ours compiled per block and, with_theirs (--compile-diffusers), diffusers' blocks too: the like-for-like
    ratio (ours compiled against diffusers eager favoured us: 1.37 against 1.07 eager for eager at 512 px)."""
    with (
        blocks_compiled(ours),
        blocks_compiled(theirs.model, blocks="transformer_blocks") if with_theirs else nullcontext(),
    ):
        yield


PARITY = 0.05  # bf16 forward difference allowed, as a share of the output's largest value: a twin that
# computes something else differs by about the output's own size; bf16 rounding by under 1% here


def bench_resolution(
    resolution: int,
    warmup: int,
    repeats: int,
    cases: set[str],
    compiled: bool,
    save=lambda result: None,
    compile_theirs: bool = False,
) -> dict:
    """Every case at one resolution; `save(result)` after each, so a run cut short keeps what it measured."""
    torch._dynamo.reset()  # else this resolution's compiled blocks recompile as dynamic-shape graphs
    config = XL_2.at_resolution(resolution)
    torch.manual_seed(0)
    with torch.device("cuda"):
        ours = PixArt(config)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.02)
    theirs = DiffusersAsOurs(diffusers_twin(ours), config)
    batch = BATCH[resolution]
    x, t, y, mask, hw, ar, target = inputs(config, batch)
    result = {"resolution": resolution, "batch": batch}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        a = ours(x, t, y, mask, img_hw=hw, aspect_ratio=ar).float()
        b = theirs(x, t, y, mask, img_hw=hw, aspect_ratio=ar).float()
    result["bf16_max_abs_diff"] = (a - b).abs().max().item()
    result["output_abs_max"] = b.abs().max().item()
    if not result["bf16_max_abs_diff"] <= PARITY * result["output_abs_max"]:  # NaN too: timing it would mislead
        raise SystemExit(f"ours and diffusers differ at {resolution} px ({json.dumps(result)}): not timed")

    def step(model, optimizer):
        return training_step(model, optimizer, (x, t, y, mask, hw, ar, target))

    tokens = (config.input_size // 2) ** 2
    flops = forward_flops(config.hidden_size, config.depth, tokens, TOKENS, config.caption_channels)
    peak = peak_flops(torch.device("cuda")) or float("nan")
    if math.isnan(peak):
        print(f"no bf16 peak known for {torch.cuda.get_device_name()}: MFU is not shown (nan)", flush=True)
    if "train" in cases:
        opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-6, fused=True)
        opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-6, fused=True)
        train = alternate([step(ours, opt_ours), step(theirs, opt_theirs)], warmup, repeats)
        result["train_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        timings = [("ours", train[0]), ("diffusers", train[1])]
        if compiled:  # as the trainer's compile=true: each block compiled; the first warm-up call compiles
            with compiled_pair(ours, theirs, compile_theirs):
                pair = [step(ours, opt_ours), *([step(theirs, opt_theirs)] if compile_theirs else [])]
                names = ["ours_compiled", "diffusers_compiled"][: len(pair)]
                timings += zip(names, alternate(pair, warmup + 1, repeats))
        for name, seconds in timings:
            result[f"train_{name}_s"] = seconds
            result[f"train_{name}_samples_per_s"] = batch / seconds
            result[f"train_{name}_tflops"] = 3 * flops * batch / seconds / 1e12
            result[f"train_{name}_mfu"] = 3 * flops * batch / seconds / peak
        del opt_ours, opt_theirs
        print(json.dumps(result), flush=True)
        save(result)
    for model in (ours, theirs):  # the training case's gradients would go to bf16 with the weights, and stay
        model.zero_grad(set_to_none=True)
        model.to(torch.bfloat16)

    def forward(model):
        def run():
            with torch.no_grad():  # inside the timed call: a decorator on this factory would not reach it
                return model(x.bfloat16(), t, y.bfloat16(), mask, img_hw=hw, aspect_ratio=ar)

        return run

    if "forward" in cases:
        result["forward_ours_s"], result["forward_diffusers_s"] = alternate(
            [forward(ours), forward(theirs)], warmup, repeats
        )
        if compiled:
            with compiled_pair(ours, theirs, compile_theirs):
                pair = [forward(ours), *([forward(theirs)] if compile_theirs else [])]
                names = ["forward_ours_compiled_s", "forward_diffusers_compiled_s"][: len(pair)]
                result.update(zip(names, alternate(pair, warmup + 1, repeats)))
        print(json.dumps(result), flush=True)
        save(result)
    if "sample" in cases and resolution == 1024:
        sampling_latency(ours, theirs, config, y, mask, compiled, result, save, compile_theirs)
    del ours, theirs
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return result


def sampling_latency(ours, theirs, config, y, mask, compiled: bool, result: dict, save, compile_theirs=False) -> None:
    """1024 px sampling figures, added to `result` and saved after each."""
    from pixart.sample import sample

    noise = torch.randn(1, 4, config.input_size, config.input_size, device="cuda", dtype=torch.bfloat16)
    cond, cond_mask = y[:1].bfloat16(), mask[:1]
    null, null_mask = y[1:2].bfloat16(), mask[1:2]
    micro = {
        "img_hw": torch.tensor([[1024.0, 1024.0]], device="cuda"),
        "aspect_ratio": torch.tensor([1.0], device="cuda"),
    }

    def run(model):
        return lambda: sample(
            model,
            noise,
            cond,
            cond_mask,
            null,
            null_mask,
            scheduler="dpm-solver++",
            steps=20,
            cfg_scale=4.5,
            progress=False,
            **micro,
        )

    torch.cuda.reset_peak_memory_stats()
    ours_s, theirs_s = alternate([run(ours), run(theirs)], 1, 3)
    result.update({"sample_1024_20steps_cfg_ours_s": ours_s, "sample_1024_20steps_cfg_diffusers_s": theirs_s})
    # Both models' bf16 weights and one step's activations: tens of GiB here means a graph is being kept
    result["sample_1024_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(result), flush=True)
    save(result)
    if compiled:
        # the blocks' graphs of the cases before are for batch 4 and the training step: sampling at batch 2
        # recompiled them as dynamic-shape graphs, which `pixart generate --compile` never runs
        torch._dynamo.reset()
        with compiled_pair(ours, theirs, compile_theirs):  # as `pixart generate --compile` on a GPU
            pair = [run(ours), *([run(theirs)] if compile_theirs else [])]
            names = ["sample_1024_20steps_cfg_ours_compiled_s", "sample_1024_20steps_cfg_diffusers_compiled_s"]
            result.update(zip(names[: len(pair)], alternate(pair, 2, 3)))
        print(json.dumps(result), flush=True)
        save(result)
        # The whole model compiled with CUDA graphs is not timed: slower than eager in the fifth and ninth
        # sessions (0.85 s against 0.73 s on an H200) for a minute or more of compiling in a short lease.
        try:  # each block compiled with its own CUDA graph: the eager parts stay eager between them
            torch._dynamo.reset()
            with blocks_compiled(ours, clone_outputs=True, mode="reduce-overhead"):
                result["sample_1024_20steps_cfg_ours_block_graphs_s"] = alternate([run(ours)], 3, 3)[0]
        except Exception as error:  # noqa: BLE001 - as above
            result["block_graphs_error"] = f"{type(error).__name__}: {str(error)[:300]}"
        print(json.dumps(result), flush=True)
        save(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resolutions", default="256,512,1024")
    parser.add_argument("--cases", default="train,forward,sample", help="any of train, forward, sample")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time ours compiled per block (as compile=true and pixart generate --compile), and in "
        "sampling each block with its own CUDA graph",
    )
    parser.add_argument(
        "--compile-diffusers",
        action="store_true",
        help="with --compile, diffusers' blocks compiled as ours are, alternated with ours compiled: the "
        "like-for-like ratios (more compiling: beyond gpu_checks.sh's time for this script)",
    )
    args = parser.parse_args()
    if args.compile_diffusers and not args.compile:
        parser.error("--compile-diffusers compares with ours compiled: add --compile")
    cases = set(args.cases.split(","))
    torch.backends.cuda.matmul.allow_tf32 = True
    started = time.time()
    name = torch.cuda.get_device_name()
    results: list[dict] = []

    def save(partial: dict) -> None:  # after every case, so a run cut short still leaves its figures
        partial["elapsed_s"] = round(time.time() - started, 1)  # since the start, for the run's timings
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"device": name, "torch": torch.__version__, "results": [*results, partial]}, f, indent=1)

    for resolution in [int(r) for r in args.resolutions.split(",")]:
        result = bench_resolution(
            resolution, args.warmup, args.repeats, cases, args.compile, save, compile_theirs=args.compile_diffusers
        )
        save(result)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(f"\n{name}, torch {torch.__version__}, bf16 autocast, fused AdamW; {time.time() - started:.0f}s")
    print(
        "| px | batch | ours samples/s | diffusers samples/s | ours TFLOP/s | ours MFU | diffusers MFU "
        "| ours compiled MFU | train ratio (both eager) | forward ratio (both eager) "
        "| forward ratio (ours compiled, diffusers eager) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def cell(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "-"

    def ratio(r: dict, theirs: str, ours: str) -> str:
        return f"{r[theirs] / r[ours]:.2f}" if theirs in r and ours in r else "-"

    for r in results:
        print(
            f"| {r['resolution']} | {r['batch']} | {cell(r, 'train_ours_samples_per_s', '.1f')} | "
            f"{cell(r, 'train_diffusers_samples_per_s', '.1f')} | {cell(r, 'train_ours_tflops', '.0f')} | "
            f"{cell(r, 'train_ours_mfu', '.1%')} | {cell(r, 'train_diffusers_mfu', '.1%')} | "
            f"{cell(r, 'train_ours_compiled_mfu', '.1%')} | {ratio(r, 'train_diffusers_s', 'train_ours_s')} | "
            f"{ratio(r, 'forward_diffusers_s', 'forward_ours_s')} | "
            f"{ratio(r, 'forward_diffusers_s', 'forward_ours_compiled_s')} |"
        )
    for r in results:  # --compile-diffusers: both compiled
        if "train_diffusers_compiled_s" in r or "forward_diffusers_compiled_s" in r:
            print(
                f"{r['resolution']} px, both compiled per block: train ratio "
                f"{ratio(r, 'train_diffusers_compiled_s', 'train_ours_compiled_s')}, forward ratio "
                f"{ratio(r, 'forward_diffusers_compiled_s', 'forward_ours_compiled_s')}"
            )
    for r in results:
        if "sample_1024_20steps_cfg_ours_s" in r:
            extra = "".join(  # each figure named by whose it is: a diffusers time once read as ours
                f", {label} {r[key]:.3f}s"
                for key, label in (
                    ("sample_1024_20steps_cfg_ours_compiled_s", "ours compiled per block"),
                    ("sample_1024_20steps_cfg_diffusers_compiled_s", "diffusers compiled per block"),
                    ("sample_1024_20steps_cfg_ours_block_graphs_s", "ours with each block in CUDA graphs"),
                )
                if key in r
            )
            print(
                f"1024 px, 20 steps with guidance, batch 1: ours {r['sample_1024_20steps_cfg_ours_s']:.3f}s, "
                f"diffusers {r['sample_1024_20steps_cfg_diffusers_s']:.3f}s{extra}; "
                f"peak memory {r['sample_1024_peak_gib']:.1f} GiB"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
