"""The PixArt transformer: shapes, masking, micro-conditions, init, checkpointing, parameter counts."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from helpers import randomize_, varied_mask

from pixart.model import TINY, TINY_MS, XL_2, XL_2_1024_MS, PixArt, PixArtConfig, count_parameters
from pixart.model.dit import DiT, DiTConfig
from pixart.model.layers import PatchEmbed, linear_at, timestep_sinusoid
from pixart.model.pos_embed import position_embedding


def numpy_pos_embed(dim: int, gh: int, gw: int, base: int, scale: float) -> np.ndarray:
    """Independent transcription of the official numpy get_2d_sincos_pos_embed (spec 1.7)."""
    grid_h = np.arange(gh, dtype=np.float64) / (gh / base) / scale
    grid_w = np.arange(gw, dtype=np.float64) / (gw / base) / scale
    grid = np.meshgrid(grid_w, grid_h)  # w goes first
    grid = np.stack(grid, axis=0).reshape(2, 1, gh, gw)

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize(("gh", "gw", "base", "scale"), [(8, 8, 8, 1.0), (6, 10, 8, 2.0), (16, 16, 32, 1.0)])
def test_position_embedding_matches_official_numpy(gh, gw, base, scale):
    ours = position_embedding(96, gh, gw, base, scale, dtype=torch.float64)[0].numpy()
    np.testing.assert_allclose(ours, numpy_pos_embed(96, gh, gw, base, scale), atol=1e-12)


def test_timestep_sinusoid_is_cos_then_sin():
    emb = timestep_sinusoid(torch.tensor([0.0, 7.0]), 8)
    # At t = 0 the cos half is all ones and the sin half all zeros.
    assert torch.equal(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(7 * freqs), torch.sin(7 * freqs)]))


@pytest.mark.parametrize("shape", [(16, 16), (12, 20), (8, 24)])
def test_forward_shapes_any_multiple_of_patch(shape):
    model = PixArt(TINY).eval()
    x = torch.randn(2, 4, *shape)
    out = model(x, torch.tensor([1, 999]), torch.randn(2, 5, 48), torch.ones(2, 5))
    assert out.shape == (2, 8, *shape)


def test_padded_caption_tokens_contribute_nothing():
    model = randomize_(PixArt(TINY)).eval()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 700.0])
    y = torch.randn(2, 12, 48)
    mask = varied_mask(2, 12, [5, 1])
    noisy_pads = y.clone()
    noisy_pads[mask == 0] = 1e4
    with torch.no_grad():
        out = model(x, t, y, mask)
        torch.testing.assert_close(model(x, t, noisy_pads, mask), out, atol=0, rtol=0)
        # Equal to running each sample on its truncated caption alone.
        first = model(x[:1], t[:1], y[:1, :5], torch.ones(1, 5))
        second = model(x[1:], t[1:], y[1:, :1], torch.ones(1, 1))
    torch.testing.assert_close(out, torch.cat([first, second]), atol=1e-5, rtol=1e-5)
    # And the mask matters: without it the output changes.
    assert not torch.allclose(model(x, t, y).detach(), out, atol=1e-3)


def test_training_gradients_with_padded_captions_equal_each_sample_alone_unpadded():
    """On a CPU only the valid caption tokens go through the caption projection; the gradients must not notice.

    The reference never pads: each sample runs alone on its truncated caption with no mask, and its
    gradients add up to the batch's (the loss is a sum over samples).
    """
    model = randomize_(PixArt(TINY))
    x, t, y = torch.randn(3, 4, 16, 16), torch.tensor([10.0, 400.0, 900.0]), torch.randn(3, 12, 48)
    lengths = [5, 12, 1]
    mask = varied_mask(3, 12, lengths)
    y[mask == 0] = float("nan")  # padding must reach neither the output nor the gradients
    model(x, t, y, mask).square().sum().backward()
    padded = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    for i, n in enumerate(lengths):
        model(x[i : i + 1], t[i : i + 1], y[i : i + 1, :n]).square().sum().backward()
    for name, p in model.named_parameters():
        assert torch.isfinite(padded[name]).all(), name
        scale = p.grad.abs().max()  # random weights give gradients up to ~1e3: compare relative to it
        torch.testing.assert_close(padded[name] / scale, p.grad / scale, atol=1e-5, rtol=0, msg=name)


def test_caption_projection_of_all_tokens_equals_the_packed_one():
    """The GPU path (project every token, zero the padded) against the CPU path (project valid tokens only)."""
    model = randomize_(PixArt(TINY)).eval()
    y = torch.randn(3, 12, 48)
    mask = varied_mask(3, 12, [5, 1, 12])
    y[mask == 0] = float("nan")  # whatever sits in the padding must not leak out
    attn_mask = model.caption_attention_mask(mask, 3, 12, y.device)
    with torch.no_grad():
        packed = model._embed_valid_captions(y, attn_mask)
        every = model._embed_all_captions(y, attn_mask)
    assert torch.equal(every[mask == 0], torch.zeros(int((mask == 0).sum()), TINY.hidden_size))
    torch.testing.assert_close(every, packed, atol=1e-6, rtol=1e-6)
    # Nor into the gradients: both paths give the projection the same finite weight gradients.
    grads = []
    for embed in (model._embed_valid_captions, model._embed_all_captions):
        model.zero_grad()
        embed(y, attn_mask).square().sum().backward()
        grads.append([p.grad.clone() for p in model.y_embedder.parameters()])
    for valid_only, every_token in zip(*grads, strict=True):
        assert torch.isfinite(every_token).all()
        torch.testing.assert_close(every_token, valid_only, atol=1e-5, rtol=1e-5)


def test_mask_of_one_sample_is_tiled_for_guidance_batches():
    model = randomize_(PixArt(TINY)).eval()
    x, t, y = torch.randn(4, 4, 16, 16), torch.full((4,), 3.0), torch.randn(4, 6, 48)
    mask = varied_mask(2, 6, [2, 4])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y, mask), model(x, t, y, torch.cat([mask, mask])))


def test_a_mask_of_another_length_than_the_captions_is_refused():
    """An untrimmed (1, 8) mask beside 4-token captions was folded into two rows and tiled."""
    model = randomize_(PixArt(TINY)).eval()
    x, t, y = torch.randn(2, 4, 16, 16), torch.full((2,), 3.0), torch.randn(2, 4, 48)
    with pytest.raises(ValueError, match="the caption mask covers 8 tokens but the captions have 4"):
        model(x, t, y, torch.ones(1, 8))
    official = varied_mask(2, 4, [2, 4])
    torch.testing.assert_close(model(x, t, y, official[:, None, None, :]), model(x, t, y, official))


def test_an_additive_float_mask_is_refused_and_a_0_1_float_mask_is_read_as_the_integer_one():
    """A 0/-inf additive mask (diffusers' attention bias) was read backwards: -inf is non-zero, so the padding
    counted as the caption and the caption as padding, without a word (review)."""
    model = randomize_(PixArt(TINY)).eval()
    x, t, y = torch.randn(2, 4, 16, 16), torch.full((2,), 3.0), torch.randn(2, 6, 48)
    mask = varied_mask(2, 6, [2, 4])
    additive = torch.zeros(2, 6).masked_fill(mask == 0, float("-inf"))
    with pytest.raises(ValueError, match=r"an additive mask .* reads the other way round: pass \(mask == 0\)"):
        model(x, t, y, additive)
    with torch.no_grad():
        assert torch.equal(model(x, t, y, mask.float()), model(x, t, y, mask))
        assert torch.equal(model(x, t, y, additive == 0), model(x, t, y, mask))  # the advice, followed


def test_initialisation_follows_official():
    model = PixArt(TINY)
    assert torch.count_nonzero(model.final_layer.linear.weight) == 0
    for block in model.blocks:
        assert torch.count_nonzero(block.cross_attn.proj.weight) == 0
        assert block.attn.qkv.bias.abs().sum() == 0
    assert model.t_block[1].weight.std().item() == pytest.approx(0.02, rel=0.2)
    # Zero output layer: the model predicts zeros at init.
    out = model(torch.randn(1, 4, 16, 16), torch.tensor([5]), torch.randn(1, 3, 48))
    assert torch.count_nonzero(out) == 0


def test_micro_conditions_are_required_and_used():
    model = randomize_(PixArt(TINY_MS)).eval()
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([1, 2]), torch.randn(2, 3, 48)
    with pytest.raises(ValueError, match="img_hw"):
        model(x, t, y)
    hw = torch.tensor([[128.0, 128.0], [64.0, 256.0]])
    ar = torch.tensor([1.0, 0.25])
    with torch.no_grad():
        a = model(x, t, y, img_hw=hw, aspect_ratio=ar)
        b = model(x, t, y, img_hw=hw.flip(0), aspect_ratio=ar)
        shared = model(x, t, y, img_hw=hw[:1], aspect_ratio=ar[:1])  # one condition for the whole batch
        repeated = model(x, t, y, img_hw=hw[:1].repeat(2, 1), aspect_ratio=ar[:1].repeat(2))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(shared, repeated, atol=0, rtol=0)
    # counts that fit no batch: an empty repeat and then a reshape error that named neither
    for kwargs, named in (
        ({"img_hw": hw[[0, 1, 1]], "aspect_ratio": ar}, r"img_hw of shape \(3, 2\) does not fit a batch of 2"),
        ({"img_hw": hw, "aspect_ratio": ar.repeat(3)}, r"aspect_ratio of shape \(6,\) does not fit a batch of 2"),
        ({"img_hw": hw, "aspect_ratio": hw}, r"aspect_ratio of shape \(2, 2\) does not fit a batch of 2: give \(2,\)"),
        ({"img_hw": torch.tensor([128.0, 128.0, 64.0]), "aspect_ratio": ar}, r"img_hw of shape \(3,\) .* \(2, 2\)"),
    ):
        with pytest.raises(ValueError, match=named):
            model(x, t, y, **kwargs)


def test_gradient_checkpointing_switched_from_outside_gives_same_gradients():
    model = randomize_(PixArt(TINY))
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([1, 500]), torch.randn(2, 4, 48)
    mask = varied_mask(2, 4, [4, 2])  # padded tokens: the checkpointed path must mask them too
    reference = model(x, t, y, mask)
    reference.square().mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    calls = []  # the blocks must be run again in the backward pass: equal gradients alone hold without it
    model.blocks[0].attn.register_forward_hook(lambda *_: calls.append(1))
    out = model(x, t, y, mask)
    assert len(calls) == 1
    torch.testing.assert_close(out, reference, atol=0, rtol=0)
    out.square().mean().backward()
    assert len(calls) == 2
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-5)


def test_bad_inputs_are_named():
    model = PixArt(TINY)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        model(torch.randn(1, 4, 15, 16), torch.tensor([1]), torch.randn(1, 3, 48))
    with pytest.raises(ValueError, match="one timestep per sample"):
        model(torch.randn(2, 4, 16, 16), torch.tensor([1, 2, 3]), torch.randn(2, 3, 48))
    with pytest.raises(ValueError, match="y must be"):
        model(torch.randn(1, 4, 16, 16), torch.tensor([1]), torch.randn(1, 3, 47))
    with pytest.raises(ValueError, match="pass caption features y .* or captions from prepare_captions"):
        model(torch.randn(1, 4, 16, 16), torch.tensor([1]), None)
    with pytest.raises(TypeError, match="expected an nn.Linear at index 0 of Sequential"):
        linear_at(model.t_block, 0)  # [SiLU, Linear]


def test_config_validation():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        PixArtConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="divisible by 3"):
        dataclasses.replace(TINY, hidden_size=64, num_heads=2, micro_conditions=True)
    with pytest.raises(ValueError, match="unknown PixArtConfig fields"):
        PixArtConfig.from_dict({"hidden": 3})


def test_xl2_parameter_counts_on_meta_device():
    with torch.device("meta"):
        assert count_parameters(PixArt(XL_2)) == 610_856_096
        assert count_parameters(PixArt(XL_2_1024_MS)) == 611_349_152


def test_prepared_captions_give_the_same_output():
    """A sampler computes the caption projection and each block's keys and values once; nothing changes."""
    model = randomize_(PixArt(TINY_MS)).eval()
    x, t, y = torch.randn(3, 4, 16, 16), torch.tensor([1.0, 400.0, 999.0]), torch.randn(3, 7, 48)
    mask = varied_mask(3, 7, [7, 3, 1])
    micro = {"img_hw": torch.tensor([[128.0, 128.0]]), "aspect_ratio": torch.tensor([1.0])}
    with torch.no_grad():
        direct = model(x, t, y, mask, **micro)
        cached = model(x, t, None, None, captions=model.prepare_captions(y, mask), **micro)
    torch.testing.assert_close(cached, direct, atol=0, rtol=0)


def test_captions_with_caption_features_too_are_refused():
    """captions replaces y and mask; given both, one of them would go unread without a word."""
    model = PixArt(TINY).eval()
    x, t, y = torch.randn(1, 4, 16, 16), torch.tensor([1]), torch.randn(1, 3, 48)
    captions = model.prepare_captions(y)
    for features, mask in ((y, None), (None, torch.ones(1, 3, dtype=torch.long))):
        with pytest.raises(ValueError, match="pass caption features y and mask, or captions .*, not both"):
            model(x, t, features, mask, captions=captions)


def test_patch_embedding_as_a_matmul_equals_the_convolution():
    torch.manual_seed(0)
    embed = PatchEmbed(patch_size=2, in_channels=4, hidden_size=24)
    x = torch.randn(3, 4, 6, 10)  # non-square: the token order is row-major over a 3 x 5 grid
    torch.testing.assert_close(embed._as_matmul(x), embed(x), atol=1e-5, rtol=1e-5)


def test_compile_blocks_compiles_one_graph_shared_by_every_block():
    from torch._dynamo.utils import counters

    from pixart.model.regional import compile_blocks

    torch._dynamo.reset()
    model = randomize_(PixArt(dataclasses.replace(TINY, depth=3)))
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([5, 900]), torch.randn(2, 16, 48)
    mask = varied_mask(2, 16, [16, 7])
    eager = model(x, t, y, mask)
    eager.square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compile_blocks(model)
    counters.clear()
    compiled = model(x, t, y, mask)
    compiled.square().mean().backward()
    assert counters["stats"]["unique_graphs"] == 1  # traced once, reused by the three blocks
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    for p, g in zip(model.parameters(), eager_grads, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)
    torch._dynamo.reset()


def test_compiled_cpu_sampling_adds_the_bias_after_the_product():
    """No grad, compiled, CPU: bare products (the add folds into the next kernel); with grad: addmm kept."""
    from torch._inductor.utils import run_and_get_code

    from pixart.model.layers import Mlp

    torch._dynamo.reset()
    mlp = Mlp(16, 64)
    x = torch.randn(2, 32, 16)  # (B, N, D) tokens, as in the model
    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(mlp), x)
        torch.testing.assert_close(out, mlp(x), atol=1e-6, rtol=1e-6)
    assert "addmm" not in "".join(code) and "mm(" in "".join(code)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the dtype eager autocast gives
        assert torch.compile(mlp)(x).dtype == mlp(x).dtype == torch.bfloat16
    torch._dynamo.reset()
    _, code = run_and_get_code(torch.compile(mlp), x)
    assert "addmm" in "".join(code)
    torch._dynamo.reset()


def test_compiled_cpu_gelu_is_the_tanh_approximation_written_as_a_sigmoid():
    """Same values and gradients as F.gelu(approximate="tanh"); the compiled CPU graph has no tanh."""
    from torch._inductor.utils import run_and_get_code

    from pixart.model.layers import gelu_tanh

    torch._dynamo.reset()
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64).requires_grad_()  # both tails and the bend
    out, code = run_and_get_code(torch.compile(gelu_tanh), x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    reference = torch.nn.functional.gelu(x, approximate="tanh")
    (reference_grad,) = torch.autograd.grad(reference.sum(), x)
    torch.testing.assert_close(out, reference, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad, reference_grad, atol=1e-12, rtol=1e-12)
    assert "tanh" not in "".join(code) and "exp" in "".join(code)
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_cuda_gelu_keeps_the_tanh_form():
    """The sigmoid rewrite is for CPUs only: a GPU graph computes F.gelu's tanh approximation."""
    from torch._inductor.utils import run_and_get_code

    from pixart.model.layers import gelu_tanh

    torch._dynamo.reset()
    x = torch.linspace(-8, 8, 4001, device="cuda")
    out, code = run_and_get_code(torch.compile(gelu_tanh), x)
    torch.testing.assert_close(out, torch.nn.functional.gelu(x, approximate="tanh"), atol=1e-6, rtol=1e-6)
    assert "tanh" in "".join(code)
    torch._dynamo.reset()


def model_and_call(kind: str) -> tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]:
    """A small model of each kind FSDP wraps, randomised, and a forward on fixed inputs."""
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
    if kind == "dit":
        dit = DiT(DiTConfig(input_size=8, depth=2, hidden_size=32, num_heads=2, num_classes=5))
        return randomize_(dit, seed=3), lambda model: model(x, t, torch.tensor([1, 5]))
    config = TINY_MS if kind == "pixart-ms" else TINY
    y, mask = torch.randn(2, 6, config.caption_channels), varied_mask(2, 6, [6, 3])
    micro = (
        {"img_hw": torch.tensor([[64.0, 64.0]] * 2), "aspect_ratio": torch.ones(2)} if config.micro_conditions else {}
    )
    return randomize_(PixArt(config), seed=3), lambda model: model(x, t, y, mask, **micro)


@pytest.mark.parametrize("kind", ["pixart", "pixart-ms", "dit"])
def test_under_autocast_bf16_parameters_train_as_fp32_master_weights(kind):
    """FSDP's bf16 policy hands the forward bf16 parameters; one process autocasts fp32 ones. Under
    autocast both must run the same model: an fp32 residual stream, every product in bf16. The stream
    used to follow the parameters, so FSDP trained with a bf16 one and one process with fp32."""
    master, call = model_and_call(kind)
    with torch.no_grad():
        for p in master.parameters():
            p.copy_(p.bfloat16().float())  # fp32 weights that bf16 holds exactly, as FSDP would cast them
    half = copy.deepcopy(master).to(torch.bfloat16)
    streams = []
    for model in (master, half):
        model.blocks[0].register_forward_pre_hook(lambda module, args: streams.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [call(model) for model in (master, half)]
    assert streams == [torch.float32, torch.float32]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    with torch.no_grad():  # without autocast (a bf16 model sampling) the stream is the parameters' dtype
        call(half)
    assert streams[-1] == torch.bfloat16


@pytest.mark.parametrize("kind", ["pixart", "dit"])
def test_timesteps_in_any_per_sample_shape_give_the_same_output(kind):
    """(B,), (B, 1) and one number for the batch; a wrong count is refused by name. DiT read a (B, 1)
    timestep as a shape error deep in its embedder, where PixArt flattened it."""
    model, call = model_and_call(kind)
    x = torch.randn(2, 4, 8, 8)
    extra = (torch.tensor([1, 5]),) if kind == "dit" else (torch.randn(2, 6, TINY.caption_channels), None)
    with torch.no_grad():
        flat = model(x, torch.tensor([10, 10]), *extra)
        assert torch.equal(model(x, torch.tensor([[10], [10]]), *extra), flat)
        assert torch.equal(model(x, torch.tensor(10), *extra), flat)
        with pytest.raises(ValueError, match=r"t must hold one timestep per sample \(2\), got shape \(3,\)"):
            model(x, torch.tensor([10, 10, 10]), *extra)
