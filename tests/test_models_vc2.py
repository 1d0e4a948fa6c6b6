"""The CycleGAN-VC2 and MaskCycleGAN-VC networks: 2-D pixel shuffle, gates, shapes at 24/36/80 coefficients,
parameter counts, the mask input, presets and their validation, export and load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from cyclegan_vc.checkpoint import export_model, load_model
from cyclegan_vc.config import PRESETS, ConfigError, config_from_dict, load_config
from cyclegan_vc.conversion import VoiceConverter
from cyclegan_vc.features import FeatureConfig
from cyclegan_vc.models import (
    CycleGANVC2Generator,
    GatedConv1d,
    GatedConv2d,
    GatedUpsample2d,
    MaskCycleGANVCGenerator,
    PatchGANDiscriminator,
    build_discriminator,
    build_generator,
    count_parameters,
    pixel_shuffle_2d,
)
from cyclegan_vc.stats import SpeakerStats
from cyclegan_vc.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 1e-5  # nn.InstanceNorm default
DIMS = (24, 36, 80)
TINY_G = dict(base_channels=4, residual_channels=8, n_residual_blocks=2)
GENERATORS = ("cyclegan_vc2", "maskcyclegan_vc")


def shuffle_2d_loop(x: np.ndarray, r: int) -> np.ndarray:
    """TensorFlow's depth_to_space, element by element: out[n, c, h*r + i, w*r + j] = x[n, (i*r + j)*C + c, h, w]."""
    n, channels, height, width = x.shape
    c_out = channels // (r * r)
    out = np.zeros((n, c_out, height * r, width * r), dtype=x.dtype)
    for b in range(n):
        for c in range(c_out):
            for h in range(height):
                for w in range(width):
                    for i in range(r):
                        for j in range(r):
                            out[b, c, h * r + i, w * r + j] = x[b, (i * r + j) * c_out + c, h, w]
    return out


def instance_norm_ref(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per sample and channel over all other axes (biased variance), then the affine map."""
    dims = tuple(range(2, h.dim()))
    mean = h.mean(dim=dims, keepdim=True)
    var = h.var(dim=dims, unbiased=False, keepdim=True)
    shape = (1, -1) + (1,) * len(dims)
    return (h - mean) / torch.sqrt(var + EPS) * weight.view(shape) + bias.view(shape)


def reduced_rows(dim: int) -> int:
    """Rows left of ``dim`` after two stride-2 "same" convolutions: ceil(ceil(dim / 2) / 2)."""
    return math.ceil(math.ceil(dim / 2) / 2)


def tiny_generator(name: str, dim: int) -> torch.nn.Module:
    return build_generator(name, in_channels=dim, **TINY_G)


# --- 2-D pixel shuffle -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,factor", [((2, 8, 3, 5), 2), ((1, 18, 2, 3), 3), ((2, 4, 1, 1), 2), ((1, 12, 4, 2), 2)])
def test_pixel_shuffle_2d_matches_an_explicit_loop(shape, factor):
    x = torch.arange(np.prod(shape), dtype=torch.float64).reshape(shape)
    np.testing.assert_array_equal(pixel_shuffle_2d(x, factor).numpy(), shuffle_2d_loop(x.numpy(), factor))


def test_pixel_shuffle_2d_is_not_a_plain_view_and_rejects_bad_channel_counts():
    x = torch.arange(2 * 8 * 3 * 5, dtype=torch.float32).reshape(2, 8, 3, 5)
    assert not torch.equal(pixel_shuffle_2d(x, 2), x.reshape(2, 2, 6, 10))  # the trap: a plain view
    with pytest.raises(ValueError, match="not divisible"):
        pixel_shuffle_2d(torch.zeros(1, 6, 2, 2), 2)


# --- every gated block is one convolution of 2c channels, value * sigmoid(gate) ----------------------


def _gated_reference(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(value, gate)`` of a gated block recomputed with plain convolutions and the explicit shuffle."""
    conv = module.conv
    if isinstance(module, GatedConv1d):
        h = F.conv1d(x, conv.weight, conv.bias, stride=conv.stride, padding=conv.padding)
        assert module.upsample == 1  # the new networks use no 1-D upsampling
    else:
        padded = module.pad(x) if getattr(module, "pad", None) is not None else x
        h = F.conv2d(padded, conv.weight, conv.bias, stride=conv.stride, padding=conv.padding)
    value, gate = h.chunk(2, dim=1)
    if isinstance(module, GatedUpsample2d):
        r = module.upsample
        value = torch.from_numpy(shuffle_2d_loop(value.detach().numpy(), r))
        gate = torch.from_numpy(shuffle_2d_loop(gate.detach().numpy(), r))
    if module.norm is not None:
        c = value.shape[1]
        value = instance_norm_ref(value, module.norm.weight[:c], module.norm.bias[:c])
        gate = instance_norm_ref(gate, module.norm.weight[c:], module.norm.bias[c:])
    return value, gate


@pytest.mark.parametrize("name", ["cyclegan_vc2", "maskcyclegan_vc", "patchgan"])
def test_every_gated_block_is_value_times_sigmoid_of_its_own_gate(name):
    torch.manual_seed(0)
    net = tiny_generator(name, 24) if name in GENERATORS else build_discriminator("patchgan", base_channels=4)
    gated_types = (GatedConv1d, GatedConv2d, GatedUpsample2d)
    blocks = [m for m in net.modules() if isinstance(m, gated_types)]
    expected = {"patchgan": 5}.get(name, 1 + 2 + TINY_G["n_residual_blocks"] + 2)  # input, down, residual, up
    assert len(blocks) == expected
    with torch.no_grad():  # distinct affine parameters for the value and gate halves
        for m in blocks:
            if m.norm is not None:
                m.norm.weight.uniform_(0.5, 1.5)
                m.norm.bias.uniform_(-0.5, 0.5)
    seen = {}

    def record(module, inputs, output):  # returns None: the output is kept
        seen.setdefault(module, (inputs[0].detach(), output.detach()))

    hooks = [m.register_forward_hook(record) for m in blocks]
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 24, 32))
    for h in hooks:
        h.remove()
    assert set(seen) == set(blocks)
    for m, (x, out) in seen.items():
        r2 = m.upsample**2 if isinstance(m, GatedUpsample2d) else 1
        assert m.conv.out_channels == 2 * out.shape[1] * r2, type(m).__name__  # one convolution, [value | gate]
        value, gate = _gated_reference(m, x)
        torch.testing.assert_close(out, value * torch.sigmoid(gate), rtol=1e-4, atol=1e-5)
        swish = value * torch.sigmoid(value)  # x * sigmoid(x) is Swish, not a gated linear unit
        assert (out - swish).abs().max() > 1e-2, type(m).__name__


# --- shapes and a forward + backward pass at 24 / 36 / 80 coefficients -------------------------------


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("name", GENERATORS)
def test_generator_shapes_and_gradients(name, dim):
    torch.manual_seed(0)
    g = tiny_generator(name, dim)
    quarter = reduced_rows(dim)
    assert g.reduced_height == quarter == {24: 6, 36: 9, 80: 20}[dim]
    assert g.to_1d.in_channels == g.to_2d.out_channels == 2 * TINY_G["base_channels"] * quarter  # computed width
    for frames in (8, 32, 64, 30):  # multiples of 4, and one that is padded and trimmed back
        x = torch.randn(2, dim, frames, requires_grad=True)
        y = g(x)
        assert y.shape == (2, dim, frames)
    y.square().mean().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0
    missing = [k for k, p in g.named_parameters() if p.grad is None or not bool(torch.isfinite(p.grad).all())]
    assert not missing
    with pytest.raises(ValueError, match="feature channels"):
        g(torch.randn(1, dim + 1, 32))
    with pytest.raises(ValueError, match="generator input"):
        g(torch.randn(dim, 32))


@pytest.mark.parametrize("dim", (24, 35, 36, 80))
def test_generator_at_paper_widths_builds_for_any_coefficient_count(dim):
    # the trap: a hard-coded reshape (2304 = 256 x 9, or 20 rows) breaks when the coefficient count changes
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        g = build_generator("cyclegan_vc2", in_channels=dim)
        y = g(torch.empty(2, dim, 128))
    assert g.to_1d.in_channels == {24: 1536, 35: 2304, 36: 2304, 80: 5120}[dim]
    assert y.shape == (2, dim, 128)


def test_generator_pads_other_lengths_by_repeating_the_last_frame_and_trims_back():
    torch.manual_seed(0)
    g = tiny_generator("cyclegan_vc2", 24).eval()
    x = torch.randn(1, 24, 30)
    padded = torch.cat([x, x[..., -1:].expand(1, 24, 2)], dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(g(x), g(padded)[..., :30])


@pytest.mark.parametrize("dim", DIMS)
def test_patchgan_shapes_gradients_and_no_sigmoid(dim):
    torch.manual_seed(0)
    d = build_discriminator("patchgan", in_height=dim, base_channels=4)
    x = torch.randn(3, dim, 128, requires_grad=True)
    out = d(x)
    assert out.shape == (3, 1, -(-dim // 8), 16)  # three stride-2 layers
    assert d(x.unsqueeze(1)).shape == out.shape
    assert d(torch.randn(2, dim, 40)).shape == (2, 1, -(-dim // 8), 5)  # any number of frames
    torch.testing.assert_close(out, d.head(d.body(x.unsqueeze(1))))  # the patch map itself: no activation
    out.square().mean().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in d.parameters())
    with pytest.raises(ValueError, match="feature rows"):
        d(torch.randn(1, dim + 2, 32))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_instance_norm_keeps_batch_samples_independent(mode):
    torch.manual_seed(0)
    nets = [tiny_generator(name, 24) for name in GENERATORS] + [build_discriminator("patchgan", base_channels=4)]
    x = torch.randn(2, 24, 32)
    changed = x.clone()
    changed[1] = 5.0 * torch.randn(24, 32) + 3.0
    with torch.no_grad():
        for net in nets:
            getattr(net, mode)()
            alone = net(x[:1])
            torch.testing.assert_close(net(x)[0], alone[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(net(changed)[0], alone[0], rtol=1e-5, atol=1e-6)


# --- the mask input of MaskCycleGAN-VC ---------------------------------------------------------------


def test_mask_generator_without_a_mask_is_the_all_ones_mask():
    torch.manual_seed(0)
    g = tiny_generator("maskcyclegan_vc", 24).eval()
    assert isinstance(g, MaskCycleGANVCGenerator) and g.input.conv.in_channels == 2  # features x mask, mask
    x = torch.randn(2, 24, 30)
    with torch.no_grad():
        plain = g(x)
        torch.testing.assert_close(plain, g(x, torch.ones_like(x)), rtol=0, atol=0)
        torch.testing.assert_close(plain, g(x, torch.ones(2, 30)), rtol=0, atol=0)  # (N, T) broadcasts
        mask = torch.ones(2, 30)
        mask[:, 10:20] = 0
        masked = g(x, mask)
        assert not torch.allclose(masked, plain)  # the mask channel reaches the output
        other = x.clone()
        other[:, :, 10:20] = 100.0 * torch.randn(2, 24, 10)  # what the mask hides does not matter
        torch.testing.assert_close(g(other, mask), masked)
        torch.testing.assert_close(g(x, mask[:, None, :]), g(x, mask.unsqueeze(1).expand(2, 24, 30)))


# --- parameter counts at the papers' sizes -----------------------------------------------------------

# Worked out from the papers' layer tables (b = 128, r = 256; a gated layer of c channels is one
# convolution of 2c channels; layers followed by instance norm have no bias; IN has 2 parameters per channel).


def vc2_generator_parameters(dim: int, planes: int = 1) -> int:
    flat = 256 * reduced_rows(dim)  # 2b channels x the rows left after two stride-2 layers
    return (
        (planes * 256 * 5 * 15 + 256)  # conv 5x15 c128, GLU, bias
        + (128 * 512 * 5 * 5 + 2 * 512)  # conv 5x5 c256 s2, IN, GLU
        + (256 * 512 * 5 * 5 + 2 * 512)  # conv 5x5 c256 s2, IN, GLU
        + (flat * 256 + 2 * 256)  # 1x1 conv to c256, IN
        + 6 * ((256 * 1024 * 3 + 2 * 1024) + (512 * 256 * 3 + 2 * 256))  # residual: k3 c512 IN GLU; k3 c256 IN
        + (256 * flat + 2 * flat)  # 1x1 conv back to 2-D, IN
        + (256 * 2048 * 5 * 5 + 2 * 512)  # conv 5x5 c1024, shuffle -> 256 (value and gate), IN, GLU
        + (256 * 1024 * 5 * 5 + 2 * 256)  # conv 5x5 c512, shuffle -> 128, IN, GLU
        + (128 * 1 * 5 * 15 + 1)  # conv 5x15 c1, bias
    )


PATCHGAN_PARAMETERS = (
    (1 * 256 * 3 * 3 + 256)  # conv 3x3 c128, GLU, bias
    + (128 * 512 * 3 * 3 + 2 * 512)  # conv 3x3 c256 s2, IN, GLU
    + (256 * 1024 * 3 * 3 + 2 * 1024)  # conv 3x3 c512 s2, IN, GLU
    + (512 * 2048 * 3 * 3 + 2 * 2048)  # conv 3x3 c1024 s2, IN, GLU
    + (1024 * 2048 * 1 * 5 + 2 * 2048)  # conv 1x5 c1024, IN, GLU
    + (1024 * 1 * 1 * 3 + 1)  # conv 1x3 c1, bias
)


def test_paper_size_parameter_counts(record_property):
    counts = {}
    for preset in ("vc2", "mask"):
        config = load_config(preset)
        with torch.device("meta"):
            g = build_generator(config.model.generator, **config.model.generator_kwargs)
            d = build_discriminator(config.model.discriminator, **config.model.discriminator_kwargs)
        counts[preset] = (count_parameters(g), count_parameters(d))
        print(f"\n{preset} preset: generator {counts[preset][0]:,} parameters, discriminator {counts[preset][1]:,}")
        record_property(f"{preset}_generator_parameters", counts[preset][0])
    assert counts["vc2"] == (vc2_generator_parameters(24), PATCHGAN_PARAMETERS) == (32_491_905, 22_888_961)
    assert counts["mask"] == (vc2_generator_parameters(24, planes=2), PATCHGAN_PARAMETERS) == (32_511_105, 22_888_961)
    with torch.device("meta"):  # the paper's own 36 coefficients: the 1-D reshape is 2304 = 256 x 9 wide
        g36 = build_generator("cyclegan_vc2", in_channels=36)
    assert count_parameters(g36) == vc2_generator_parameters(36) == 32_886_657


# --- registry, presets, validation -------------------------------------------------------------------


def test_registry_builds_the_new_networks_and_rejects_unknown_arguments():
    assert isinstance(build_generator("cyclegan_vc2", **TINY_G), CycleGANVC2Generator)
    assert isinstance(build_generator("maskcyclegan_vc", **TINY_G), MaskCycleGANVCGenerator)
    assert isinstance(build_discriminator("patchgan", base_channels=4), PatchGANDiscriminator)
    with pytest.raises(ValueError, match=r"unknown generator argument\(s\) \['upsample_init'\].*residual_channels"):
        build_generator("cyclegan_vc2", upsample_init="icnr")
    with pytest.raises(ValueError, match=r"unknown discriminator argument\(s\) \['head'\]"):
        build_discriminator("patchgan", head="linear")


@pytest.mark.parametrize("preset", ["vc2", "vc2-small", "mask", "mask-small"])
def test_successor_presets_load_and_use_the_two_step_loss(preset):
    assert preset in PRESETS
    config = load_config(preset)
    t, m = config.training, config.model
    assert t.two_step_adversarial
    assert m.discriminator == "patchgan"
    masked = preset.startswith("mask")
    assert (m.generator, t.mask_frames > 0) == (("maskcyclegan_vc", True) if masked else ("cyclegan_vc2", False))
    small = load_config("small" if preset.endswith("small") else "paper").training
    schedule = ("iterations", "lr_decay_start", "identity_steps", "batch_size", "crop_frames", "generator_lr",
                "discriminator_lr", "generator_betas", "discriminator_betas", "generator_ema")
    assert [getattr(t, k) for k in schedule] == [getattr(small, k) for k in schedule]
    if masked:
        assert t.mask_frames == round(25 * 256 / 22050 * 1000 / FeatureConfig().frame_period)  # 290 ms at 5 ms


def test_mask_frames_and_the_mask_generator_go_together():
    with pytest.raises(ConfigError, match="mask_frames > 0"):
        load_config("vc2-small", ["training.mask_frames=10"])
    with pytest.raises(ConfigError, match="mask_frames > 0"):
        load_config("mask-small", ["training.mask_frames=0"])
    with pytest.raises(ConfigError, match="mask_frames > 0"):
        load_config("small", ["model.generator=maskcyclegan_vc", "model.generator_kwargs={}"])
    with pytest.raises(ConfigError, match=r"mask_frames must lie in \[0, crop_frames\)"):
        load_config("mask-small", ["training.mask_frames=128"])
    with pytest.raises(ConfigError, match=r"mask_frames must lie"):
        load_config("mask-small", ["training.mask_frames=-1"])
    with pytest.raises(ConfigError, match="two_step_adversarial"):
        load_config("vc2-small", ["training.two_step_adversarial=3"])
    assert load_config("mask-small", ["training.mask_frames=127"]).training.mask_frames == 127
    defaults = config_from_dict({}).training
    assert (defaults.two_step_adversarial, defaults.mask_frames) == (False, 0)  # CycleGAN-VC has neither


def test_patchgan_needs_no_frame_count_but_the_feature_height_must_match():
    config = load_config("vc2-small", ["training.crop_frames=64"])  # no in_frames to keep in step
    assert config.training.crop_frames == 64
    with pytest.raises(ConfigError, match="in_height"):
        load_config("vc2-small", ["model.discriminator_kwargs.in_height=36"])
    # what `recipe --mcep-dim 36` sets
    dims = ["model.generator_kwargs.in_channels=36", "model.discriminator_kwargs.in_height=36"]
    config = load_config("mask-small", dims)
    assert config.model.generator_kwargs["in_channels"] == 36


# --- a training step of the current trainer (one adversarial step, no masking yet) --------------------


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("preset", ["vc2-small", "mask-small"])
def test_one_training_step_updates_every_parameter(preset, dim):
    overrides = [
        f"model.generator_kwargs.in_channels={dim}", f"model.discriminator_kwargs.in_height={dim}",
        "model.generator_kwargs.base_channels=4", "model.generator_kwargs.residual_channels=8",
        "model.discriminator_kwargs.base_channels=4", "training.batch_size=1", "training.crop_frames=32",
    ]
    if preset.startswith("mask"):
        overrides.append("training.mask_frames=8")
    trainer = Trainer(load_config(preset, overrides))
    before = {role: {k: v.detach().clone() for k, v in net.named_parameters()}
              for role, net in trainer.networks.items()}
    gen = torch.Generator().manual_seed(dim)
    losses = trainer.train_step(torch.randn(1, dim, 32, generator=gen), torch.randn(1, dim, 32, generator=gen))
    assert all(bool(torch.isfinite(v)) for v in losses.values())
    for role, net in trainer.networks.items():
        unchanged = [k for k, v in net.named_parameters() if torch.equal(v, before[role][k])]
        assert not unchanged, f"{role}: parameters not updated by one step: {unchanged}"


# --- an exported model records its architecture ------------------------------------------------------


@pytest.mark.parametrize("name,dim", [("cyclegan_vc2", 24), ("maskcyclegan_vc", 36)])
def test_exported_model_loads_without_being_told_the_architecture(tmp_path, name, dim):
    torch.manual_seed(0)
    generators = {role: tiny_generator(name, dim).eval() for role in ("G_ab", "G_ba")}
    rng = np.random.default_rng(0)
    stats = {
        role: SpeakerStats(rng.normal(size=dim), rng.uniform(0.5, 2.0, size=dim), 5.0, 0.2, 100, 80)
        for role in ("A", "B")
    }
    config = load_config("mask-small" if name == "maskcyclegan_vc" else "vc2-small",
                         [f"model.generator_kwargs.in_channels={dim}", f"model.discriminator_kwargs.in_height={dim}"])
    path = export_model(
        tmp_path / "model.safetensors",
        generators,
        generator=name,
        generator_kwargs=dict(generators["G_ab"].config),  # what Trainer.export writes
        stats=stats,
        features=FeatureConfig(mcep_dim=dim),
        speakers={"A": "SF1", "B": "TM3"},
        step=7,
        config=config.to_dict(),
    )
    model = load_model(path)
    assert model.generator == name
    assert type(model.generators["G_ab"]) is type(generators["G_ab"])
    x = torch.randn(1, dim, 30)
    with torch.no_grad():
        for role in ("G_ab", "G_ba"):
            torch.testing.assert_close(model.generators[role](x), generators[role](x), rtol=0, atol=0)
    mcep = rng.normal(size=(30, dim))
    converter = VoiceConverter.load(path, device="cpu")
    assert converter.convert_mcep(mcep, "A2B").shape == (30, dim)
