"""The CycleGAN-VC networks: pixel shuffle, gated units, shapes, parameter counts, registry, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cyclegan_vc.config import ConfigError, load_config
from cyclegan_vc.models import (
    CycleGANVCDiscriminator,
    CycleGANVCGenerator,
    GatedConv1d,
    GatedConv2d,
    build_discriminator,
    build_generator,
    count_parameters,
    pixel_shuffle_1d,
)

EPS = 1e-5  # nn.InstanceNorm default


pytestmark = pytest.mark.usefixtures("one_thread")


def shuffle_loop(x: np.ndarray, r: int) -> np.ndarray:
    """The TensorFlow pixel shuffler, element by element: out[n, c', w*r + i] = x[n, i*(C/r) + c', w]."""
    n, channels, width = x.shape
    out = np.zeros((n, channels // r, width * r), dtype=x.dtype)
    for b in range(n):
        for c in range(channels // r):
            for w in range(width):
                for i in range(r):
                    out[b, c, w * r + i] = x[b, i * (channels // r) + c, w]
    return out


def conv1d_loop(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int = 1) -> np.ndarray:
    """Zero-padded ("same" for odd kernels) 1-D convolution (cross-correlation) of one (C_in, T) signal."""
    c_out, c_in, k = weight.shape
    pad = k // 2
    padded = np.pad(x, ((0, 0), (pad, pad)))
    frames = (x.shape[1] + 2 * pad - k) // stride + 1
    out = np.zeros((c_out, frames))
    for o in range(c_out):
        for t in range(frames):
            out[o, t] = np.sum(weight[o] * padded[:, t * stride : t * stride + k]) + (0.0 if bias is None else bias[o])
    return out


def instance_norm(h: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Per-channel normalisation over time (biased variance) of a (C, T) array, then the affine map."""
    mean = h.mean(axis=1, keepdims=True)
    var = h.var(axis=1, keepdims=True)
    return (h - mean) / np.sqrt(var + EPS) * weight[:, None] + bias[:, None]


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def as_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


# --- pixel shuffle -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,factor", [((2, 6, 5), 2), ((3, 6, 4), 3), ((1, 8, 7), 4), ((2, 4, 1), 2)])
def test_pixel_shuffle_1d_matches_an_explicit_loop(shape, factor):
    x = torch.arange(np.prod(shape), dtype=torch.float32).reshape(shape)
    np.testing.assert_array_equal(pixel_shuffle_1d(x, factor).numpy(), shuffle_loop(x.numpy(), factor))


def test_pixel_shuffle_1d_is_not_a_plain_view_and_rejects_bad_channel_counts():
    x = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)
    assert not torch.equal(pixel_shuffle_1d(x, 2), x.reshape(2, 3, 6))  # the trap: a plain view
    with pytest.raises(ValueError, match="not divisible"):
        pixel_shuffle_1d(torch.zeros(1, 5, 3), 2)


# --- gated linear units ------------------------------------------------------------------------------


def test_gated_conv1d_is_value_times_sigmoid_of_a_different_gate_convolution():
    torch.manual_seed(0)
    layer = GatedConv1d(3, 2, kernel_size=3, norm=False)
    x = torch.randn(1, 3, 6)
    w, b = as_np(layer.conv.weight), as_np(layer.conv.bias)
    # the first c output channels of the convolution are the value, the last c the gate: two convolutions
    value = conv1d_loop(as_np(x[0]), w[:2], b[:2])
    gate = conv1d_loop(as_np(x[0]), w[2:], b[2:])
    assert not np.allclose(w[:2], w[2:])
    expected = value * sigmoid(gate)
    got = as_np(layer(x)[0])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    swish = value * sigmoid(value)  # x * sigmoid(x) is Swish, not a gated linear unit
    assert np.abs(got - swish).max() > 1e-2


def test_gated_conv1d_with_stride_and_instance_norm_normalises_value_and_gate_apart():
    torch.manual_seed(1)
    layer = GatedConv1d(3, 2, kernel_size=5, stride=2, norm=True)
    with torch.no_grad():  # non-trivial affine parameters, different for the value and the gate halves
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
    assert layer.conv.bias is None  # the normalisation removes any per-channel constant
    x = torch.randn(1, 3, 12)
    w, g, beta = as_np(layer.conv.weight), as_np(layer.norm.weight), as_np(layer.norm.bias)
    value = instance_norm(conv1d_loop(as_np(x[0]), w[:2], None, stride=2), g[:2], beta[:2])
    gate = instance_norm(conv1d_loop(as_np(x[0]), w[2:], None, stride=2), g[2:], beta[2:])
    got = as_np(layer(x)[0])
    assert got.shape == (2, 6)
    np.testing.assert_allclose(got, value * sigmoid(gate), rtol=1e-4, atol=1e-5)


def test_upsampling_gated_conv1d_shuffles_value_and_gate_separately():
    torch.manual_seed(2)
    c, r = 2, 2
    layer = GatedConv1d(3, c, kernel_size=3, norm=True, upsample=r)
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 5)
    w, g, beta = as_np(layer.conv.weight), as_np(layer.norm.weight), as_np(layer.norm.bias)
    assert w.shape[0] == 2 * c * r  # one convolution: value (c*r channels) then gate (c*r channels)
    for n in range(2):
        h = conv1d_loop(as_np(x[n]), w, None)
        value = shuffle_loop(h[None, : c * r], r)[0]  # conv c*r -> shuffle -> c channels, 2x frames
        gate = shuffle_loop(h[None, c * r :], r)[0]
        expected = instance_norm(value, g[:c], beta[:c]) * sigmoid(instance_norm(gate, g[c:], beta[c:]))
        got = as_np(layer(x)[n])
        assert got.shape == (c, 10)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_icnr_upsampling_starts_without_a_checkerboard_and_keeps_the_default_scale():
    torch.manual_seed(5)
    x = torch.randn(2, 6, 16)
    icnr = GatedConv1d(6, 4, kernel_size=5, norm=True, upsample=2, upsample_init="icnr")
    default = GatedConv1d(6, 4, kernel_size=5, norm=True, upsample=2)
    out = icnr(x)
    assert out.shape == (2, 4, 32)
    # sub-positions 2w and 2w + 1 are equal: nearest-neighbour upsampling of one convolution
    torch.testing.assert_close(out[..., 0::2], out[..., 1::2])
    assert not torch.allclose(default(x)[..., 0::2], default(x)[..., 1::2], atol=1e-3)
    # same scale as the default initialisation: the copied block is an untouched default block
    w = icnr.conv.weight.detach().view(2, 2, 4, 6, 5)
    assert torch.equal(w[:, 0], w[:, 1])
    assert 0.5 < float(w.std() / default.conv.weight.detach().std()) < 2.0
    with pytest.raises(ValueError, match="upsample_init"):
        GatedConv1d(6, 4, kernel_size=5, upsample=2, upsample_init="zeros")


def test_icnr_generator_has_no_period_2_pattern_at_initialisation():
    torch.manual_seed(6)
    x = torch.randn(1, 24, 128)
    spectra = {}
    for init in ("default", "icnr"):
        torch.manual_seed(7)
        g = CycleGANVCGenerator(in_channels=24, base_channels=8, upsample_init=init).eval()
        with torch.no_grad():
            y = g(x)[0]
        power = torch.fft.rfft(y - y.mean(-1, keepdim=True), dim=-1).abs().pow(2).mean(0)
        spectra[init] = float(power[-3:].mean() / power.mean())  # share at the Nyquist rate (period 2)
    assert spectra["icnr"] < 0.2 * spectra["default"], spectra


def test_gated_conv2d_is_a_gate_and_pads_like_tensorflow_same():
    torch.manual_seed(3)
    layer = GatedConv2d(1, 2, kernel_size=(6, 3), stride=(1, 2), norm=False)
    x = torch.randn(1, 1, 7, 8)
    w, b = as_np(layer.conv.weight), as_np(layer.conv.bias)
    padded = np.pad(as_np(x[0, 0]), ((2, 3), (1, 1)))  # even kernel: 2 before, 3 after (TF "same")
    out = np.zeros((4, 7, 4))
    for o in range(4):
        for i in range(7):
            for j in range(4):
                out[o, i, j] = np.sum(w[o, 0] * padded[i : i + 6, 2 * j : 2 * j + 3]) + b[o]
    got = as_np(layer(x)[0])
    assert got.shape == (2, 7, 4)
    np.testing.assert_allclose(got, out[:2] * sigmoid(out[2:]), rtol=1e-5, atol=1e-6)


# --- shapes ------------------------------------------------------------------------------------------


def test_generator_output_length_equals_input_length():
    torch.manual_seed(0)
    g = build_generator("cyclegan_vc", base_channels=4, n_residual_blocks=2)
    for frames in (8, 12, 32, 100, 128):  # multiples of 4
        x = torch.randn(3, 24, frames)
        assert g(x).shape == (3, 24, frames)
    for frames in (5, 10, 37):  # other lengths are padded and trimmed back
        assert g(torch.randn(2, 24, frames)).shape == (2, 24, frames)
    with pytest.raises(ValueError, match="generator input"):
        g(torch.randn(24, 32))


def test_generator_pads_other_lengths_by_repeating_the_last_frame_and_trims_back():
    torch.manual_seed(0)
    g = build_generator("cyclegan_vc", base_channels=4, n_residual_blocks=1).eval()
    x = torch.randn(1, 24, 30)
    # 30 frames are padded to 32 by repeating the last frame: the output equals that of the padded input, trimmed
    padded = torch.cat([x, x[..., -1:].expand(1, 24, 2)], dim=-1)
    torch.testing.assert_close(g(x), g(padded)[..., :30])


def test_discriminator_output_shapes():
    torch.manual_seed(0)
    d = build_discriminator("cyclegan_vc", base_channels=4, in_frames=128)
    x = torch.randn(3, 24, 128)
    assert d(x).shape == (3, 1)
    assert d(x.unsqueeze(1)).shape == (3, 1)  # (N, 1, H, W) as well
    assert d.body(x.unsqueeze(1)).shape == (3, 32, 6, 8)  # 8b channels, 24x128 -> 6x8 (strides (1,2),(2,2),(2,2),(1,2))
    with pytest.raises(ValueError, match="24x128"):
        d(torch.randn(3, 24, 64))
    patch = build_discriminator("cyclegan_vc", base_channels=4, head="patch")
    assert patch(x).shape == (3, 1, 6, 8)
    assert patch(torch.randn(2, 24, 64)).shape == (2, 1, 6, 4)  # any number of frames
    sig = build_discriminator("cyclegan_vc", base_channels=4, head="sigmoid")
    out = sig(x)
    assert out.shape == (3, 1) and bool(((out > 0) & (out < 1)).all())
    with pytest.raises(ValueError, match="head"):
        build_discriminator("cyclegan_vc", head="softmax")


# --- parameter counts --------------------------------------------------------------------------------

# Worked out from the paper's layer table (b = 128; a gated layer of c channels is one convolution of 2c
# channels; layers followed by instance norm have no bias, and IN has 2 affine parameters per channel).
PAPER_GENERATOR_PARAMETERS = (
    (24 * 256 * 15 + 256)  # conv k15 c128 (+GLU), bias
    + (128 * 512 * 5 + 2 * 512)  # conv k5 c256 s2, IN
    + (256 * 1024 * 5 + 2 * 1024)  # conv k5 c512 s2, IN
    + 6 * ((512 * 2048 * 3 + 2 * 2048) + (1024 * 512 * 3 + 2 * 512))  # residual: k3 c1024 IN GLU; k3 c512 IN
    + (512 * 2048 * 5 + 2 * 1024)  # conv k5 c1024 -> shuffle x2 -> 512 (value and gate), IN
    + (512 * 1024 * 5 + 2 * 512)  # conv k5 c512 -> shuffle x2 -> 256, IN
    + (256 * 24 * 15 + 24)  # conv k15 c24, bias
)
PAPER_DISCRIMINATOR_PARAMETERS = (
    (1 * 256 * 3 * 3 + 256)  # conv 3x3 c128 s(1,2), bias
    + (128 * 512 * 3 * 3 + 2 * 512)  # conv 3x3 c256 s(2,2), IN
    + (256 * 1024 * 3 * 3 + 2 * 1024)  # conv 3x3 c512 s(2,2), IN
    + (512 * 2048 * 6 * 3 + 2 * 2048)  # conv 6x3 c1024 s(1,2), IN
    + (1024 * 6 * 8 + 1)  # fully connected to one output
)


def test_paper_preset_parameter_counts(record_property):
    config = load_config("paper")
    g = build_generator(config.model.generator, **config.model.generator_kwargs)
    d = build_discriminator(config.model.discriminator, **config.model.discriminator_kwargs)
    n_g, n_d = count_parameters(g), count_parameters(d)
    print(f"\npaper preset: generator {n_g:,} parameters, discriminator {n_d:,} parameters")
    record_property("generator_parameters", n_g)
    record_property("discriminator_parameters", n_d)
    assert n_g == PAPER_GENERATOR_PARAMETERS == 38_035_736
    assert n_d == PAPER_DISCRIMINATOR_PARAMETERS == 21_882_369


# --- registry ----------------------------------------------------------------------------------------


def test_registry_rejects_unknown_names_and_arguments():
    with pytest.raises(ValueError, match=r"unknown generator 'unet'.*cyclegan_vc"):
        build_generator("unet")
    with pytest.raises(ValueError, match=r"unknown discriminator 'multiscale'.*cyclegan_vc"):
        build_discriminator("multiscale")
    with pytest.raises(ValueError, match=r"unknown generator argument\(s\) \['channels'\].*base_channels"):
        build_generator("cyclegan_vc", channels=64)
    with pytest.raises(ValueError, match=r"unknown discriminator argument\(s\) \['dropout'\].*head"):
        build_discriminator("cyclegan_vc", dropout=0.1)
    with pytest.raises(ConfigError, match="channels"):
        load_config("debug", ["model.generator_kwargs.channels=3"])
    assert isinstance(build_generator("cyclegan_vc", base_channels=4), CycleGANVCGenerator)
    assert isinstance(build_discriminator("cyclegan_vc", base_channels=4), CycleGANVCDiscriminator)


# --- instance normalisation keeps samples independent ------------------------------------------------


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_instance_norm_keeps_batch_samples_independent(mode):
    torch.manual_seed(0)
    g = build_generator("cyclegan_vc", base_channels=4, n_residual_blocks=2)
    d = build_discriminator("cyclegan_vc", base_channels=4, in_frames=32)
    for net in (g, d):
        getattr(net, mode)()
    x = torch.randn(2, 24, 32)
    changed = x.clone()
    changed[1] = 5.0 * torch.randn(24, 32) + 3.0  # a very different second sample
    with torch.no_grad():
        for net in (g, d):
            alone = net(x[:1])
            torch.testing.assert_close(net(x)[0], alone[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(net(changed)[0], alone[0], rtol=1e-5, atol=1e-6)
            assert not torch.allclose(net(changed)[1], net(x)[1])
