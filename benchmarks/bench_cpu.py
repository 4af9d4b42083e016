"""Our PixArt against diffusers' PixArtTransformer2DModel on this machine's CPU, same weights, same inputs.

Medium config: depth 4, hidden 384, 6 heads, 32x32 latent (256 tokens), batch 8, 120 caption tokens of
width 4096 with varied valid lengths, fp32. A training step is forward + loss + backward + AdamW; a
sampling forward is one no-grad forward. The two implementations alternate in one process after a
warm-up, in back-to-back pairs; times are medians, and each ratio is the median of the pairs' ratios
(robust to drifts in machine load, which hit both members of a pair alike). Both train with the same
AdamW (the trainer's, fused). Our sampling forward is a step of our sampling loop, which prepares the
captions (projection and each block's keys and values) once per image, not once per step; diffusers'
pipeline recomputes them every step. That preparation is timed too, and a twentieth of it (a 20-step
image's share) counts in each of our sampler steps. The bare forward is shown too. Compiled, ours is
what users get: the trainer's compile=true compiles each block, and `pixart generate --compile` the
whole model; --compile-diffusers compiles diffusers' alike (each block for training, the whole model for
sampling), for a like-for-like figure. The outputs of what is timed are compared first, and the run
stops if they differ. The last line reads `train_ratio=R1 sample_ratio=R2` (diffusers' time over ours:
above 1 means we are faster).

    .venv/bin/python benchmarks/bench_cpu.py [--repeats 15] [--threads 2] [--no-compile] [--compile-diffusers] [--bf16]

--bf16 runs both models under CPU bf16 autocast over fp32 weights (the trainer's precision=bf16): on a
CPU with AMX its products run about 4x faster. The targets are defined in fp32, without it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from pixart.model.pixart import PixArt, PixArtConfig
from pixart.model.regional import compile_blocks
from pixart.train.config import OptimConfig
from pixart.train.step import build_optimizer
from pixart.weights import save_transformer

CONFIG = PixArtConfig(
    input_size=32,
    patch_size=2,
    in_channels=4,
    hidden_size=384,
    depth=4,
    num_heads=6,
    caption_channels=4096,
    max_length=120,
)
BATCH, TOKENS = 8, 120
SAMPLER_STEPS = 20  # the default sampler's steps: each carries a twentieth of the image's caption preparation
VALID = [120, 97, 80, 64, 48, 31, 17, 6]  # valid caption tokens per sample (T5 pads every prompt to 120)


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 4, 32, 32, generator=g)
    t = torch.randint(0, 1000, (BATCH,), generator=g)
    y = torch.randn(BATCH, TOKENS, 4096, generator=g)
    mask = torch.zeros(BATCH, TOKENS, dtype=torch.long)
    for i, n in enumerate(VALID):
        mask[i, :n] = 1
    target = torch.randn(BATCH, 8, 32, 32, generator=g)
    return x, t, y, mask, target


def build_pair():
    """Our model (random weights, every tensor) and diffusers' with the same weights."""
    import diffusers

    torch.manual_seed(0)
    ours = PixArt(CONFIG)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.02)
    with tempfile.TemporaryDirectory() as folder:
        save_transformer(ours, folder, to="diffusers")
        theirs = diffusers.PixArtTransformer2DModel.from_pretrained(folder)
    return ours, theirs


def ours_forward(model, x, t, y, mask):
    return model(x, t, y, mask)


def theirs_forward(model, x, t, y, mask):
    return model(
        x,
        encoder_hidden_states=y,
        timestep=t,
        encoder_attention_mask=mask,
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    ).sample


def train_step(model, forward, optimizer, batch):
    x, t, y, mask, target = batch
    out = forward(model, x, t, y, mask)
    loss = (out.float() - target).square().mean()  # eps MSE and the variance channels alike: the same work for both
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def sample_forward(model, forward, batch):
    x, t, y, mask, _ = batch
    return forward(model, x, t, y, mask)


@torch.no_grad()
def sampler_step(model, captions, batch):
    """What our sampling loop runs per step: the captions were prepared once, before the first step."""
    x, t, _, _, _ = batch
    return model(x, t, None, None, captions=captions)


def training_check(model, forward, batch) -> tuple[float, float]:
    """(loss, gradient norm) of one forward and backward on `batch`, gradients cleared after: what a
    timed training step computes, compared across the two before any is timed."""
    x, t, y, mask, target = batch
    loss = (forward(model, x, t, y, mask).float() - target).square().mean()
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    return loss.item(), norm.item()


def check_parity(ours_train, theirs_train, ours_sample, theirs_sample, captions, batch) -> str:
    """The outputs of the callables that are timed (compiled where they are), against diffusers': a fast
    path that computed something else would otherwise pass for a speed-up. SystemExit beyond fp32 noise."""
    with torch.no_grad():
        reference = theirs_forward(theirs_sample, *batch[:4])
        step = (sampler_step(ours_sample, captions, batch) - reference).abs().max().item()
        bare = (ours_forward(ours_sample, *batch[:4]) - reference).abs().max().item()
    (loss_o, norm_o), (loss_t, norm_t) = (
        training_check(ours_train, ours_forward, batch),
        training_check(theirs_train, theirs_forward, batch),
    )
    loss_gap, norm_gap = abs(loss_o - loss_t) / abs(loss_t), abs(norm_o - norm_t) / norm_t
    summary = (
        f"max |ours - diffusers| of the timed callables: sampler step {step:.1e}, bare forward {bare:.1e}; "
        f"training loss {loss_gap:.1e} and gradient norm {norm_gap:.1e} apart (relative)"
    )
    if max(step, bare) > 1e-3 or max(loss_gap, norm_gap) > 1e-4:
        raise SystemExit(f"the two implementations disagree, so no time is comparable: {summary}")
    return summary


def autocast(fn):
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn()

    return run


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="time our eager model only")
    parser.add_argument(
        "--compile-diffusers", action="store_true", help="compile diffusers' model as ours is (like for like)"
    )
    parser.add_argument("--bf16", action="store_true", help="both models under CPU bf16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours, theirs = build_pair()
    batch = inputs()
    with torch.no_grad():
        parity = (ours_forward(ours, *batch[:4]) - theirs_forward(theirs, *batch[:4])).abs().max().item()
    ours_train, ours_sample = copy.deepcopy(ours), ours
    theirs_train, theirs_sample = copy.deepcopy(theirs), theirs
    if not args.no_compile:  # as users get it: training compiles each block, generation the whole model
        compile_blocks(ours_train)
        ours_sample = torch.compile(ours)
    if args.compile_diffusers:
        for block in theirs_train.transformer_blocks:
            block.compile()
        theirs_sample = torch.compile(theirs)
    # The same AdamW for both (the trainer's, fused): the optimizer is not what is compared here
    opt_ours = build_optimizer(ours_train.parameters(), OptimConfig(), lr=1e-5)
    opt_theirs = build_optimizer(theirs_train.parameters(), OptimConfig(), lr=1e-5)

    @torch.no_grad()
    def prepare_captions():
        return ours.prepare_captions(batch[2], batch[3])

    captions = prepare_captions()
    with torch.no_grad():
        theirs_out = theirs_forward(theirs, *batch[:4])
        step_parity = (sampler_step(ours, captions, batch) - theirs_out).abs().max().item()
    timed_parity = check_parity(ours_train, theirs_train, ours_sample, theirs_sample, captions, batch)
    if args.bf16:  # prepared under autocast, as a sampler running under it would
        captions = autocast(prepare_captions)()

    preparation = "caption preparation (ours, once per image)"
    cases = {
        # ours only, once per image (diffusers does it inside every forward, timed below); first, as each of
        # our sampler steps carries a share of it, timed as they are (under autocast with --bf16)
        preparation: (prepare_captions, lambda: None),
        "train step": (
            lambda: train_step(ours_train, ours_forward, opt_ours, batch),
            lambda: train_step(theirs_train, theirs_forward, opt_theirs, batch),
        ),
        "sampling forward (a step of the sampler)": (
            lambda: sampler_step(ours_sample, captions, batch),
            lambda: sample_forward(theirs_sample, theirs_forward, batch),
        ),
        "bare forward (captions recomputed)": (
            lambda: sample_forward(ours_sample, ours_forward, batch),
            lambda: sample_forward(theirs_sample, theirs_forward, batch),
        ),
    }
    if args.bf16:
        cases = {name: (autocast(ours_fn), autocast(theirs_fn)) for name, (ours_fn, theirs_fn) in cases.items()}
    rows = {}
    for name, (ours_fn, theirs_fn) in cases.items():
        for _ in range(args.warmup):
            ours_fn()
            theirs_fn()
        ours_times, theirs_times = [], []
        for i in range(args.repeats):
            # Back-to-back pairs, first one then the other in turn: a drift in machine load (this machine
            # has noisy neighbours) hits both members of a pair alike, so each pair's ratio is robust.
            if i % 2:
                theirs_times.append(timed(theirs_fn))
                ours_times.append(timed(ours_fn))
            else:
                ours_times.append(timed(ours_fn))
                theirs_times.append(timed(theirs_fn))
        if name.startswith("sampling forward"):  # each step carries its share of the image's preparation
            ours_times = [o + rows[preparation]["ours"] / SAMPLER_STEPS for o in ours_times]
        ratios = sorted(d / o for o, d in zip(ours_times, theirs_times))
        rows[name] = {
            "ours": statistics.median(ours_times),
            "theirs": statistics.median(theirs_times),
            "ratio": statistics.median(ratios),
            "quartiles": (ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]),
        }
    precision, mode = "bf16 autocast" if args.bf16 else "fp32", "eager" if args.no_compile else "compiled"
    print(
        f"CPU, {args.threads} threads, torch {torch.__version__}; depth 4, hidden 384, 6 heads, 256 tokens, batch 8, "
        f"120 caption tokens (valid {VALID}), {precision}; ours {mode}, diffusers "
        f"{'compiled' if args.compile_diffusers else 'eager'}; both fused AdamW; "
        f"max |ours - diffusers| in fp32, eager: forward {parity:.2e}, sampler step {step_parity:.2e}; {timed_parity}; "
        f"{args.repeats} pairs; our sampler step includes 1/{SAMPLER_STEPS} of the caption preparation"
    )
    print("| case | ours (s, median) | diffusers (s, median) | ratio (median of pairs) | quartiles |")
    print("|---|---|---|---|---|")
    for name, row in [*list(rows.items())[1:], (preparation, rows[preparation])]:  # the preparation last
        low, high = row["quartiles"]
        if name == preparation:
            print(f"| {name} | {row['ours']:.3f} | - | - | - |")
            continue
        print(f"| {name} | {row['ours']:.3f} | {row['theirs']:.3f} | {row['ratio']:.2f} | {low:.2f}-{high:.2f} |")
    train, sample = rows["train step"], rows["sampling forward (a step of the sampler)"]
    print(f"train_ratio={train['ratio']:.2f} sample_ratio={sample['ratio']:.2f}")


if __name__ == "__main__":
    main()
