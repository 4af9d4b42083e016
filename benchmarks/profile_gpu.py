"""Where a PixArt-XL/2 training step's GPU time goes, and what the attention kernels cost.

1. The self- and cross-attention shapes of one block (512 px, batch B) through each SDPA backend,
   forward + backward, in TFLOP/s; and the MLP's first matrix product as the GEMM ceiling.
2. Training steps (bf16 autocast, fused AdamW) for each variant named in --variants: `whole` compiles the
   whole model, `regional` compiles each block (one graph for all 28), `eager` compiles nothing; a `cudnn-`
   prefix makes cuDNN the first SDPA backend, a `packed-` prefix projects only the valid caption tokens (the
   CPU path) instead of all of them, a `trainer-` prefix adds what `pixart train` does around the bare step
   (gradient clipping, the non-finite guard with its flags read by the host one step late, the EMA update)
   and `synced-` the same with the flags read at the end of each step (the trainer before 2026-11-27), so the
   two price that read; a `tuned-` prefix turns on inductor's coordinate-descent tuning of the kernels it
   generates, an `autotune-` prefix compiles with mode max-autotune-no-cudagraphs (inductor's Triton matrix
   products timed against cuBLAS, which can take a product's elementwise neighbours into its epilogue;
   minutes of tuning); a `products-` prefix computes the masked cross-attention as two batched products
   around a softmax that inductor fuses with the mask (`ProductsCrossAttention`) instead of cuDNN's masked
   kernel, which spends 0.57 ms a block on 120 keys; a `pure-` prefix runs the model in bf16 throughout,
   parameters and activations (the residual stream included) with no autocast and AdamW on the bf16
   parameters: not a way to train, but the upper bound of keeping activations in bf16 (the fused elementwise
   kernels move fp32 residuals under autocast); `:B` sets the batch. Each prints samples/s and MFU, and the
   first (or each, with --profile all) also a profile of its kernels by category (GEMM, attention, fused
   elementwise, optimizer, other).

    python benchmarks/profile_gpu.py --variants whole:16,regional:16,cudnn-regional:16,regional:32
    python benchmarks/profile_gpu.py --kernel-batch 0 --variants trainer-regional:16,synced-regional:16
    python benchmarks/profile_gpu.py --variants regional:16     # with flash-attn-4 installed: FA4 kernel rows too
    python benchmarks/profile_gpu.py --kernel-batch 0 --variants regional:16,pure-regional:16,regional:32
    python benchmarks/profile_gpu.py --kernel-batch 0 --profile all --variants regional:16,autotune-regional:16
    python benchmarks/profile_gpu.py --profile all --variants regional:16,products-regional:16
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from contextlib import nullcontext

import torch
import torch._inductor.config
import torch.nn.functional as F
from bench_gpu import TOKENS, alternate, inputs, training_step  # this folder (run as benchmarks/profile_gpu.py)
from torch.nn.attention import SDPBackend, sdpa_kernel

from pixart.model.layers import CrossAttention
from pixart.model.pixart import XL_2, PixArt
from pixart.model.regional import compile_blocks
from pixart.train.flags import DeferredFlags, optimizer_step, skip_flag, step_flags
from pixart.train.metrics import forward_flops, peak_flops
from pixart.train.step import update_ema

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
ORDER_CUDNN_FIRST = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


def timed(fn, warmup: int = 3, repeats: int = 10) -> float:
    """Median CUDA-event time of `fn` after a warm-up (bench_gpu's timing, one function)."""
    return alternate([fn], warmup, repeats)[0]


def attention_flops(batch: int, heads: int, n: int, m: int, d: int) -> float:
    """FLOPs of attention forward + backward, N queries over M keys: 4 N M d per head forward (two products),
    2.5 times that backward, the forward's recomputation included (FlashAttention's convention). MFU counts
    the training step as 3x the forward, so on that basis a rate here is 3/3.5 of what it prints."""
    return 3.5 * 4 * batch * heads * n * m * d


def cross_attention_by_products(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor, scores_dtype: torch.dtype
) -> torch.Tensor:
    """Masked attention as q k^T, a softmax and a product with v: (B, H, N, d) queries over (B, H, L, d)
    keys and values, `attn_mask` (B, 1, 1, L) bool with a valid key in every row (the model's mask).

    With 120 keys the (B, H, N, L) scores are small enough to write out: compiled, the scale, the mask and
    the softmax become one kernel around two cuBLAS products. `scores_dtype` float32 computes the scores
    from the bf16 values as a flash kernel does (fp32 accumulation, nothing rounded before the softmax);
    bfloat16 rounds them to bf16 first (cheaper, less exact). The weights are rounded to v's dtype for the
    second product, as flash kernels do too.
    """
    with torch.autocast(q.device.type, enabled=False):  # autocast would run the fp32 product in bf16
        scores = q.to(scores_dtype) @ k.to(scores_dtype).transpose(-1, -2)  # (B, H, N, L)
        scores = scores.float() * q.shape[-1] ** -0.5
        weights = scores.masked_fill(~attn_mask, float("-inf")).softmax(dim=-1)  # (B, H, N, L)
        return weights.to(v.dtype) @ v  # (B, H, N, d)


class ProductsCrossAttention(CrossAttention):
    """CrossAttention with `cross_attention_by_products` (fp32 scores) in place of SDPA: the `products-`
    variant swaps each block's cross_attn to this class before compiling, and runs with TF32 products
    (`tf32_products`: under autocast the only fp32 products of the step are these scores, from bf16 q, k)."""

    def forward(self, x, y, attn_mask, kv=None):  # CrossAttention.forward with the products
        B, N, D = x.shape
        H, d = self.num_heads, D // self.num_heads
        q = self.q_linear(x).view(B, N, H, d).transpose(1, 2)  # (B, H, N, d)
        kv = self.kv_linear(y) if kv is None else kv  # (B, L, 2D)
        L = kv.shape[1]
        k, v = (part.view(B, L, H, d).transpose(1, 2) for part in kv.chunk(2, dim=-1))  # each (B, H, L, d)
        out = cross_attention_by_products(q, k, v, attn_mask, torch.float32)  # (B, H, N, d)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class tf32_products:
    """fp32 matrix products on TF32 tensor cores inside the block: exact for operands that bf16 holds (a
    bf16 value fits TF32's 10-bit mantissa) with fp32 accumulation, as a flash kernel computes its scores."""

    def __enter__(self):
        self.before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.before


def compiled_alternatives(q, k, v, kc, vc, mask, grad_out) -> dict:
    """One block's attention without SDPA, forward + backward, each compiled: the masked cross-attention as
    products with fp32 scores (fp32 or TF32 products) or bf16 ones, and FlexAttention (inductor's own flash
    kernel, Triton) with the mask as a score_mod; FlexAttention on the self-attention too."""
    batch, heads, n, d = q.shape
    lengths = mask[:, 0, 0, :].sum(dim=-1)  # (B,)
    cross = (kc, vc, mask)
    candidates = {  # label: (attention, its keys, values and mask, context)
        "cross_masked_products_fp32_scores": (
            lambda: cross_attention_by_products(q, kc, vc, mask, torch.float32),
            cross,
            nullcontext,
        ),
        "cross_masked_products_tf32_scores": (
            lambda: cross_attention_by_products(q, kc, vc, mask, torch.float32),
            cross,
            tf32_products,
        ),
        "cross_masked_products_bf16_scores": (
            lambda: cross_attention_by_products(q, kc, vc, mask, torch.bfloat16),
            cross,
            nullcontext,
        ),
    }

    def keep_valid(score, b, h, q_idx, kv_idx):
        return torch.where(kv_idx < lengths[b], score, float("-inf"))

    try:
        from torch.nn.attention.flex_attention import flex_attention

        candidates["cross_masked_flex"] = (lambda: flex_attention(q, kc, vc, score_mod=keep_valid), cross, nullcontext)
        candidates["self_flex"] = (lambda: flex_attention(q, k, v), (k, v, None), nullcontext)
    except ImportError as error:
        print(f"flex attention unavailable: {error}", flush=True)
    result = {}
    for label, (attend, (keys, values, attn_mask), context) in candidates.items():
        try:
            with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                reference = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask).float()
            with context():
                compiled = torch.compile(attend)

                def forward_backward(compiled=compiled, keys=keys, values=values):
                    torch.autograd.grad(compiled(), (q, keys, values), grad_out)

                seconds = timed(forward_backward)
                with torch.no_grad():
                    difference = (compiled().float() - reference).abs().max().item()
            result[f"{label}_ms"] = round(seconds * 1e3, 3)
            flops = attention_flops(batch, heads, n, keys.shape[2], d)
            result[f"{label}_tflops"] = round(flops / seconds / 1e12, 1)
            result[f"{label}_max_abs_diff"] = difference
        except Exception as error:  # noqa: BLE001 - a compile failure names itself, the rest are timed
            result[label] = f"unavailable: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return result


def attention_kernels(batch: int, heads: int = 16, n: int = 1024, d: int = 72) -> dict:
    """Forward + backward TFLOP/s of each SDPA backend on one block's attention shapes."""
    g = torch.Generator(device="cuda").manual_seed(0)

    def make(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()

    q, k, v = make(batch, heads, n, d), make(batch, heads, n, d), make(batch, heads, n, d)
    kc, vc = make(batch, heads, TOKENS, d), make(batch, heads, TOKENS, d)
    lengths = torch.randint(8, TOKENS + 1, (batch,), device="cuda", generator=g)
    mask = (torch.arange(TOKENS, device="cuda")[None] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, L)

    grad_out = torch.ones(batch, heads, n, d, device="cuda", dtype=torch.bfloat16)  # made once, not timed

    def attend_with(backend, keys, values, attn_mask=None):
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask)
        # returned, not accumulated into .grad: an add per input would be timed with the kernel
        torch.autograd.grad(out, (q, keys, values), grad_out)

    result = {}
    for label, (keys, values, attn_mask, m) in {
        "self": (k, v, None, n),
        "cross_masked": (kc, vc, mask, TOKENS),
        "cross_unmasked": (kc, vc, None, TOKENS),
    }.items():
        flops = attention_flops(batch, heads, n, m, d)
        for name, backend in BACKENDS.items():
            if name == "math" and label == "self":
                continue
            try:
                seconds = timed(lambda b=backend, k_=keys, v_=values, m_=attn_mask: attend_with(b, k_, v_, m_))
                result[f"{label}_{name}_ms"] = round(seconds * 1e3, 3)
                result[f"{label}_{name}_tflops"] = round(flops / seconds / 1e12, 1)
            except RuntimeError as error:
                result[f"{label}_{name}"] = f"unavailable: {str(error).splitlines()[0][:120]}"
    result.update(compiled_alternatives(q, k, v, kc, vc, mask, grad_out))
    try:  # FlashAttention-4 called directly, where the flash-attn-4 package is installed
        result.update(fa4_kernels(q, k, v, kc, vc, grad_out))
    except Exception as error:  # noqa: BLE001 - not installed, or a shape FA4 refuses: say which, time the rest
        result["fa4"] = f"unavailable: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    x = torch.randn(batch * n, 1152, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4608, 1152, device="cuda", dtype=torch.bfloat16)
    seconds = timed(lambda: x @ w.t())
    result["gemm_fc1_tflops"] = round(2 * batch * n * 1152 * 4608 / seconds / 1e12, 1)
    return result


def fa4_kernels(q, k, v, kc, vc, grad_out) -> dict:
    """FlashAttention-4 on the self and unmasked cross shapes, forward + backward, and the self forward
    alone (FA4 takes no padding mask). Called directly: torch 2.11's SDPA route to FA4
    (`activate_flash_attention_impl("FA4")`) unpacks two values where flash-attn-4 4.0.0b36 returns five."""
    from flash_attn.cute import flash_attn_func

    batch, heads, n, d = q.shape

    def tokens_first(t):  # FA4 reads (B, N, H, d)
        return t.detach().transpose(1, 2).contiguous().requires_grad_()

    def attend(q_, k_, v_, grad_tokens_first):
        out = flash_attn_func(q_, k_, v_)
        out = out[0] if isinstance(out, tuple) else out  # some versions return (out, lse)
        torch.autograd.grad(out, (q_, k_, v_), grad_tokens_first)

    result = {}
    grad_tokens_first = grad_out.transpose(1, 2).contiguous()
    fq = tokens_first(q)
    for label, keys, values, m in (("self", k, v, n), ("cross_unmasked", kc, vc, kc.shape[2])):
        fk, fv = tokens_first(keys), tokens_first(values)
        seconds = timed(lambda fk=fk, fv=fv: attend(fq, fk, fv, grad_tokens_first))
        result[f"{label}_fa4_ms"] = round(seconds * 1e3, 3)
        result[f"{label}_fa4_tflops"] = round(attention_flops(batch, heads, n, m, d) / seconds / 1e12, 1)
    fk, fv = tokens_first(k), tokens_first(v)
    with torch.no_grad():
        seconds = timed(lambda: flash_attn_func(fq, fk, fv))
        result["self_forward_fa4_ms"] = round(seconds * 1e3, 3)
        reference = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        out = flash_attn_func(fq, fk, fv)
        out = out[0] if isinstance(out, tuple) else out
        result["self_fa4_max_abs_diff"] = (out.float() - reference.float()).abs().max().item()
    with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        seconds = timed(lambda: F.scaled_dot_product_attention(q, k, v))
        result["self_forward_cudnn_ms"] = round(seconds * 1e3, 3)
    return result


def category(name: str) -> str:
    lowered = name.lower()
    # attention first: FlashAttention-2's and the memory-efficient kernels name cutlass types in their
    # templates (pytorch_flash::flash_fwd_kernel<... cutlass::bfloat16_t>, fmha_cutlassF_bf16_...), and
    # FlexAttention is an inductor template: each was counted as a matrix product
    if any(key in lowered for key in ("flash", "fmha", "attention", "sdpa", "mha", "flex")):
        return "attention"
    if lowered.startswith("triton_tem"):  # inductor's matrix-product templates (max-autotune), epilogues included
        return "gemm"
    if any(key in lowered for key in ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas", "ampere_bf16", "splitk")):
        return "gemm"
    if "cudnn" in lowered:  # cuDNN runs the attention here (no convolution in the model)
        return "attention"
    if "adam" in lowered or "multi_tensor" in lowered:
        return "optimizer"
    if "triton" in lowered:
        return "fused elementwise (triton)"
    return "other"


def profile_categories(fn, steps: int = 3) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    kernels: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type.name != "CUDA" or getattr(event, "is_user_annotation", False):
            continue  # user annotations (compiled graphs' calls) are mirrored on the GPU as spans, not kernels
        us = event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
        totals[category(event.name)] += us / steps
        kernels[event.name[:90]] += us / steps
    total = sum(totals.values())
    top = sorted(kernels.items(), key=lambda item: -item[1])[:15]
    return {
        "step_ms_in_kernels": round(total / 1e3, 2),
        "share": {k: f"{v / total:.1%} ({v / 1e3:.1f} ms)" for k, v in sorted(totals.items(), key=lambda i: -i[1])},
        "top_kernels_ms": {k: round(v / 1e3, 2) for k, v in top},
    }


KINDS = ("whole", "regional", "eager")
PREFIXES = ("cudnn-", "packed-", "trainer-", "synced-", "tuned-", "autotune-", "pure-", "products-")


def variant_parts(variant: str) -> tuple[set[str], str]:
    """'packed-cudnn-regional' -> ({'packed-', 'cudnn-'}, 'regional'); an unknown kind is an error."""
    prefixes = set()
    while prefix := next((p for p in PREFIXES if variant.startswith(p)), None):
        prefixes.add(prefix)
        variant = variant.removeprefix(prefix)
    if variant not in KINDS:
        raise SystemExit(f"unknown variant kind {variant!r}: use one of {KINDS}, prefixed by any of {PREFIXES}")
    if "pure-" in prefixes and prefixes & {"trainer-", "synced-"}:
        raise SystemExit("pure- times the bare step: it does not combine with trainer- or synced-")
    return prefixes, variant


def trainer_step(forward, model, optimizer, batch, host_read: bool):
    """The bare step plus pixart train's clipping, non-finite guard and EMA (pixart.train.loop, .flags, .step).

    host_read=False is the trainer as it is: the device skips a bad update itself, and the host reads a
    step's flags (then updates the EMA) once the next step's backward is queued. host_read=True reads them
    at the end of each step, as the trainer used to.
    """
    x, t, y, mask, hw, ar, target = batch
    params = list(model.parameters())
    ema = {n: p.detach().clone().float() for n, p in model.named_parameters()}
    deferred = DeferredFlags()
    step = 0

    def finish_steps():
        for record in deferred.settle():
            if not record.skipped:
                update_ema(ema, model, 0.9999)

    def run():
        nonlocal step
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = forward(x, t, y, mask, img_hw=hw, aspect_ratio=ar)
        loss = (out.float() - target).square().mean()
        loss.backward()
        finish_steps()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 0.01)
        flags = step_flags(loss.detach(), grad_norm, stop_requested=False)
        optimizer_step(optimizer, skip_flag(flags))
        optimizer.zero_grad(set_to_none=True)
        step += 1
        deferred.push(step, flags)
        if host_read:
            finish_steps()

    return run


def measure_variant(variant: str, batch: int, profile_it: bool, resolution: int) -> dict:
    torch._dynamo.reset()
    config = XL_2.at_resolution(resolution)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = PixArt(config)
    batch_inputs = inputs(config, batch)  # the same inputs and step as bench_gpu.py
    side = config.input_size
    prefixes, kind = variant_parts(variant)
    if "pure-" in prefixes:
        model.bfloat16()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    if "packed-" in prefixes:
        model.embed_captions = model._embed_valid_captions
    if "products-" in prefixes:
        for block in model.blocks:
            block.cross_attn.__class__ = ProductsCrossAttention
    torch._inductor.config.coordinate_descent_tuning = "tuned-" in prefixes
    # max-autotune: inductor times its own Triton matrix-product templates against cuBLAS and can then fuse
    # a product's elementwise neighbours (bias + GELU, gate + residual) into it. Minutes of tuning.
    options = {"mode": "max-autotune-no-cudagraphs"} if "autotune-" in prefixes else {}
    if kind == "regional":
        compile_blocks(model, **options)
    forward = torch.compile(model, **options) if kind == "whole" else model
    if "pure-" in prefixes:
        # every activation in bf16: without autocast, which would run LayerNorm, and so the residual
        # stream after it, in fp32
        x, t, y, *rest = batch_inputs
        run = training_step(forward, optimizer, (x.bfloat16(), t, y.bfloat16(), *rest), autocast=False)
    elif prefixes & {"trainer-", "synced-"}:
        run = trainer_step(forward, model, optimizer, batch_inputs, host_read="synced-" in prefixes)
    else:
        run = training_step(forward, optimizer, batch_inputs)

    order = ORDER_CUDNN_FIRST if "cudnn-" in prefixes else None
    started = time.time()
    torch.cuda.reset_peak_memory_stats()
    products = tf32_products() if "products-" in prefixes else nullcontext()
    with sdpa_kernel(order, set_priority=True) if order else nullcontext(), products:
        run()
        torch.cuda.synchronize()
        compile_s = time.time() - started
        seconds = timed(run, warmup=2, repeats=8)
        tokens = (side // 2) ** 2
        flops = 3 * forward_flops(config.hidden_size, config.depth, tokens, TOKENS, config.caption_channels)
        result = {
            "variant": variant,
            "resolution": resolution,
            "batch": batch,
            "first_step_s": round(compile_s, 1),
            "step_ms": round(seconds * 1e3, 2),
            "samples_per_s": round(batch / seconds, 1),
            "mfu": round(flops * batch / seconds / (peak_flops(torch.device("cuda")) or float("nan")), 4),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        }
        if profile_it:
            result["profile"] = profile_categories(run)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="whole:16,regional:16,cudnn-regional:16,regional:32")
    parser.add_argument("--resolution", type=int, default=512, help="image side in pixels (XL/2, PixArtMS at 1024)")
    parser.add_argument("--kernel-batch", type=int, default=16, help="batch of the kernel timings; 0 skips them")
    parser.add_argument("--budget-s", type=float, default=480, help="skip variants once this much time has passed")
    parser.add_argument("--profile", default="first", help="first, all or none")
    args = parser.parse_args()
    specs = args.variants.split(",")
    for spec in specs:  # every variant checked before the first one takes minutes
        variant, _, batch = spec.partition(":")
        variant_parts(variant)
        if not batch.isdigit():
            raise SystemExit(f"variant {spec!r} needs a batch size, as in regional:16")
    started = time.time()
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    try:
        from torch.nn.attention import list_flash_attention_impls

        print("flash attention implementations:", list_flash_attention_impls(), flush=True)
    except ImportError:
        pass
    if args.kernel_batch:
        print(json.dumps({"kernels": attention_kernels(args.kernel_batch)}), flush=True)
    for i, spec in enumerate(specs):
        if time.time() - started > args.budget_s:
            print(json.dumps({"skipped": spec, "reason": "time budget"}), flush=True)
            continue
        variant, batch = spec.split(":")
        profile_it = args.profile == "all" or (args.profile == "first" and i == 0)
        try:
            print(json.dumps(measure_variant(variant, int(batch), profile_it, args.resolution)), flush=True)
        except Exception as error:  # noqa: BLE001 - one failed variant must not lose the others' figures
            print(json.dumps({"variant": spec, "error": f"{type(error).__name__}: {str(error)[:400]}"}), flush=True)
        torch.cuda.empty_cache()
    print(f"total {time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
