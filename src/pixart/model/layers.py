"""Building blocks shared by PixArt and the class-conditional DiT.

Module and parameter names follow the official checkpoints (`x_embedder.proj`, `t_embedder.mlp`,
`attn.qkv`, `cross_attn.kv_linear`, `mlp.fc1`...), so released weights load with no renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation z * (1 + scale) + shift; shift and scale broadcast over tokens."""
    return x * (1 + scale) + shift


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (the official activation); in graphs compiled for a CPU, as a sigmoid.

    0.5 * (1 + tanh(u)) = sigmoid(2u), so x * sigmoid(2u) is the same function. A CPU's tanh is slow
    (both eager and inductor's): on this project's 2-core Xeon a (8, 256, 1536) fp32 GELU took 3.6 ms
    forward and 12 ms forward plus backward compiled with tanh, 1.7 and 6.0 ms as a sigmoid (max
    difference 5e-7, gradients 4e-6). Eager keeps F.gelu (the sigmoid form is five kernels there), and
    GPUs keep it too (their tanh is cheap; not measured the other way).
    """
    if torch.compiler.is_compiling() and x.device.type == "cpu":
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)  # sqrt(2 / pi) * (x + 0.044715 x^3)
        return x * torch.sigmoid(2 * u)
    return F.gelu(x, approximate="tanh")


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) raw timesteps (int or float) -> (B, dim) fp32 embedding laid out [cos | sin].

    The order is the opposite of the position embedding's; both follow the official code.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]  # (B, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class PatchEmbed(nn.Module):
    """(B, C, H, W) latents -> (B, H/p * W/p, D) tokens, row-major over the patch grid."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self._as_matmul(x)
        # Eager: the convolution, whose result per image does not depend on the batch it is in (a GEMM over
        # B*N rows may round differently as B changes), so an image is the same whatever --batch made it.
        # contiguous: a transposed residual stream would make every LayerNorm and add copy or run strided.
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()  # (B, N, D)

    def _as_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """The same map as one matrix product over the non-overlapping patches (compiled graphs).

        Inductor re-lays a convolution's input out channels-last and then mis-strides a dynamic bucket
        height (a crash when training over several buckets); as a GEMM there is nothing to re-lay out.
        """
        B, C, H, W = x.shape
        p = self.patch_size
        patches = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
        patches = patches.reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C*p*p), row-major over the grid
        weight = self.proj.weight.reshape(self.proj.out_channels, C * p * p)  # (D, C*p*p), (c, pi, pj) order
        return F.linear(patches, weight, self.proj.bias)  # (B, N, D)


class Linear(nn.Linear):
    """nn.Linear whose bias, when sampling through a graph compiled for a CPU, follows the product.

    On a CPU a product with bias is an addmm that first copies the broadcast bias into its output and
    then accumulates onto it. As a bare product plus an add on (B, N, D) tokens, inductor folds the add
    into the pointwise kernel that follows (GELU, gate and residual; on 2-D inputs it would fuse the two
    back into an addmm): a sampling step of benchmarks/bench_cpu.py's medium
    config ran 2-5% faster (three runs of 16-40 back-to-back pairs), the same output within 1e-6. A
    compiled training step ran 1.4-3% slower that way (fc1's bias gradient, a column sum, then fuses
    into the GELU backward kernel and slows it), so with gradients, in eager mode and on GPUs (cuBLAS
    adds a bias in the product's epilogue) it stays one addmm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # is_compiling() first: in eager mode the test then costs one call
        bias_after = torch.compiler.is_compiling() and x.device.type == "cpu" and not torch.is_grad_enabled()
        if bias_after and self.bias is not None:
            product = F.linear(x, self.weight)
            return product + self.bias.to(product.dtype)  # bf16 under CPU autocast, as addmm would give
        return F.linear(x, self.weight, self.bias)


def residual_dtype(device: torch.device, parameters: torch.dtype) -> torch.dtype:
    """The residual stream's dtype: fp32 under autocast, whose products run in bf16 while the sums stay
    exact (as one process trains, and as the official code and diffusers do), else the parameters' dtype
    (a bf16 model sampling). FSDP's bf16 policy hands a forward bf16 parameters: following them, it
    trained with a bf16 stream where one process had an fp32 one."""
    return torch.float32 if torch.is_autocast_enabled(device.type) else parameters


def per_sample_timesteps(t: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """t as (B,): one number for the whole batch, or one per sample in any shape ((B,), (B, 1)), checked."""
    t = torch.as_tensor(t, device=device)
    t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(-1)
    if t.shape[0] != batch:
        raise ValueError(f"t must hold one timestep per sample ({batch}), got shape {tuple(t.shape)}")
    return t


def linear_at(sequential: nn.Module, index: int) -> nn.Linear:
    """The nn.Linear at `index` of a Sequential (such as adaLN_modulation's [SiLU, Linear]), checked."""
    module = sequential[index]  # type: ignore[index]  # nn.Module has no __getitem__; Sequential has
    if not isinstance(module, nn.Linear):
        raise TypeError(f"expected an nn.Linear at index {index} of {type(sequential).__name__}, got {module}")
    return module


class SinusoidMlp(nn.Module):
    """Scalar -> 256-dim [cos | sin] sinusoid -> Linear, SiLU, Linear: the timestep and size embedders."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) scalars -> (B, D)."""
        # The sinusoid is computed in fp32 and cast, as the official AMP path does.
        freq = timestep_sinusoid(t, self.frequency_dim).to(linear_at(self.mlp, 0).weight.dtype)  # (B, 256)
        return self.mlp(freq)  # (B, D)

    def mlp_linears(self) -> tuple[nn.Linear, nn.Linear]:
        return linear_at(self.mlp, 0), linear_at(self.mlp, 2)


class TimestepEmbedder(SinusoidMlp):
    """(B,) timesteps -> (B, D)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.embed(t)


class SizeEmbedder(SinusoidMlp):
    """Micro-condition embedder: each scalar of a (B, k) input embedded alone, concatenated to (B, k*D)."""

    def forward(self, values: torch.Tensor, batch_size: int) -> torch.Tensor:
        if values.ndim == 1:
            values = values[:, None]
        if values.shape[0] != batch_size:  # a single condition shared by the batch (or by CFG halves)
            values = values.repeat(batch_size // values.shape[0], 1)
        k = values.shape[1]
        embedded = self.embed(values.reshape(-1))  # (B*k, D)
        return embedded.reshape(batch_size, k * embedded.shape[-1])  # (B, k*D)


def mlp_width(hidden_size: int, mlp_ratio: float) -> int:
    """The MLP's hidden width, int(hidden_size * mlp_ratio) as officially; a ratio that leaves no unit is refused."""
    if not (math.isfinite(mlp_ratio) and int(hidden_size * mlp_ratio) >= 1):
        raise ValueError(f"mlp_ratio must give the MLP at least one unit (4.0 officially), got {mlp_ratio}")
    return int(hidden_size * mlp_ratio)


class Mlp(nn.Module):
    """fc1, tanh-GELU, fc2 (timm's Mlp with the official activation)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.fc2 = Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """Caption projection y_proj (C_cap -> D) plus the learned null caption used for guidance.

    `y_embedding` is a buffer, as officially: the optimiser never sees it, it travels in the state dict.
    """

    y_embedding: torch.Tensor  # (max_length, C_cap); declared for type checkers, which cannot see buffers

    def __init__(self, caption_channels: int, hidden_size: int, max_length: int, normalize: bool = False):
        super().__init__()
        self.normalize = normalize
        self.y_proj = Mlp(caption_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(max_length, caption_channels) / caption_channels**0.5)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            # A parameter-free LayerNorm: small encoders (MiniLM) give features whose scale the
            # zero-ish init of y_proj cannot use; it adds no keys, so weights stay compatible.
            y = F.layer_norm(y, y.shape[-1:], eps=1e-6)
        return self.y_proj(y)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (rows [q; k; v], each head-major)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(hidden_size, 3 * hidden_size)
        self.proj = Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        # Views of column blocks, not unbind of a permuted (B, N, 3, H, d) view: the same strides forward,
        # but backward is one cat of the three gradients instead of a stack and then a copy back to the
        # product's layout (demo stage-2 step on a CPU 3% faster, eager; compiled graphs fuse either way).
        q, k, v = (part.view(B, N, self.num_heads, -1).transpose(1, 2) for part in self.qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)  # each (B, H, N, d)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class CrossAttention(nn.Module):
    """Image tokens attend to caption tokens; padded caption tokens contribute exactly nothing.

    No norm and no gate on this branch (official). `attn_mask` is (B, 1, 1, L) bool, True where a
    caption token is valid, or None to attend to every token.
    """

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = Linear(hidden_size, hidden_size)
        self.kv_linear = Linear(hidden_size, 2 * hidden_size)
        self.proj = Linear(hidden_size, hidden_size)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None, attn_mask: torch.Tensor | None, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`kv` (B, L, 2D) is kv_linear(y) computed ahead (a sampler reuses it for every step); else y."""
        B, N, D = x.shape
        H, d = self.num_heads, D // self.num_heads
        q = self.q_linear(x).view(B, N, H, d).transpose(1, 2)  # (B, H, N, d)
        kv = self.kv_linear(y) if kv is None else kv  # (B, L, 2D), rows [k; v]
        L = kv.shape[1]
        k, v = (part.view(B, L, H, d).transpose(1, 2) for part in kv.chunk(2, dim=-1))  # each (B, H, L, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N, d)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class FinalLayer(nn.Module):
    """T2IFinalLayer: LayerNorm, (shift, scale) = table + conditioning embedding, Linear to p*p*C_out."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, per_block_adaln: bool = False):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = Linear(hidden_size, patch_size * patch_size * out_channels)
        if per_block_adaln:  # DiT: its own modulation MLP
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        else:  # adaLN-single: a learned (2, D) table added to the timestep embedding
            self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "scale_shift_table"):
            shift, scale = (self.scale_shift_table[None] + c[:, None]).chunk(2, dim=1)  # each (B, 1, D)
        else:
            shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)  # each (B, 1, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p*p*C_out)


def unpatchify(x: torch.Tensor, grid_h: int, grid_w: int, patch_size: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W); within each token the channel index is fastest ((pi, pj, c))."""
    B = x.shape[0]
    p = patch_size
    C = x.shape[-1] // (p * p)
    x = x.reshape(B, grid_h, grid_w, p, p, C)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(B, C, grid_h * p, grid_w * p)
