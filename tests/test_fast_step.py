"""The fast training iteration (Trainer.train_step) against the plain reference iteration.

The reference is :func:`cyclegan_vc.training.reference_train_step` run with ``torch.nn``
convolutions and Adam's default (for-loop) implementation: generator passes one by one, the
discriminators frozen for the generators' backward pass, separate discriminator passes on the detached
fakes. Both trainers start from the same weights and see the same crops, for iterations on both sides
of the identity cut-off and into the learning-rate decay. Before each iteration the fast trainer gets
the reference's weights and optimiser state again: float rounding differences of a GAN's iterations
grow chaotically (over 5 free-running iterations of a tiny model, up to 1e-2 relative), so each
iteration is compared from identical states.

Tolerances (float32), per iteration:
- losses: relative 1e-4;
- gradients of every parameter: relative L2 error 2e-3 (a gradient from the wrong loss, a missing
  term or a 1 % scale error fails);
- weights after the update: elementwise ``rtol = 1e-4, atol = 2 * lr = 4e-4``. Adam's first steps
  move every element by about ``lr * sign(grad)``, so an element whose gradient is ~0 (below float
  rounding) can differ by up to two learning rates between two correct implementations (measured:
  <= 1.6e-4); and relative L2 error per tensor 1e-3 (measured: <= 2e-4).
Measured over the three configurations below: losses <= 3e-6, gradients <= 3e-5 relative.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from cyclegan_vc.config import Config, load_config
from cyclegan_vc.models import WeightGradientSink, gemm_conv2d, gemm_convolutions
from cyclegan_vc.models.gemm import tap_conv2d
from cyclegan_vc.training import ROLES, Trainer, cpu_has_native_bf16, reference_train_step

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


pytestmark = pytest.mark.usefixtures("one_thread")


def crops(config, generator: torch.Generator, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    t = config.training
    shape = (t.batch_size if batch is None else batch, 24, t.crop_frames)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator) + 0.5


def assert_same_state(reference: Trainer, fast: Trainer, lr: float) -> None:
    for role in ROLES:
        for (name, p), q in zip(reference.networks[role].named_parameters(), fast.networks[role].parameters()):
            where = f"{role}.{name}"
            assert (p.grad is None) == (q.grad is None), where
            if p.grad is not None:
                error = float((q.grad - p.grad).norm() / p.grad.norm().clamp_min(1e-12))
                assert error <= 2e-3, f"gradient of {where}: relative L2 error {error:.2e}"
            error = float((q - p).detach().norm() / p.detach().norm().clamp_min(1e-12))
            assert error <= 1e-3, f"weights of {where}: relative L2 error {error:.2e}"
            torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-4, atol=2 * lr, msg=lambda m: f"{where}: {m}")
        for p, q in zip(reference.networks[role].parameters(), fast.networks[role].parameters()):
            s, f = reference.optimizers[role].state[p], fast.optimizers[role].state[q]
            assert int(s["step"]) == int(f["step"])


def one_iteration_from_the_reference_state(reference: Trainer, other: Trainer, config, generator, step: int) -> dict:
    """``other`` gets ``reference``'s weights and Adam state, then both run one iteration on the same
    crops (the reference with ``torch.nn`` convolutions); ``other``'s losses must equal the reference's.
    Returns ``other``'s losses."""
    other.copy_state_from(reference)
    x, y = crops(config, generator)
    with gemm_convolutions(False):
        expected = reference_train_step(reference, x, y)
    got = other.train_step(x, y)
    assert set(got) == set(expected)
    for key in expected:
        assert float(got[key]) == pytest.approx(float(expected[key]), rel=1e-4, abs=1e-7), (step, key)
    return got


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "overrides",
    [
        ["training.batch_size=1"],  # the paper's batch size, linear discriminator head
        ["training.batch_size=2"],  # the small preset's batch size
        ["training.batch_size=2", "model.discriminator_kwargs.head=patch"],
        ["training.batch_size=1", "model.generator_kwargs.base_channels=16", "model.discriminator_kwargs.base_channels=16"],
    ],
    ids=["batch1", "batch2", "batch2-patch", "base16"],
)
def test_train_step_matches_the_reference_iteration_across_the_identity_cut_off(device, overrides, monkeypatch):
    if device == "cuda":  # full fp32 on the GPU too: TF32 convolutions differ by ~1e-3 between batch shapes
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    config = load_config("debug", ["training.identity_steps=3", "training.iterations=8", "training.lr_decay_start=4", *overrides])
    reference, fast = Trainer(config, device=device), Trainer(config, device=device)
    for role in ROLES:  # identical initial weights
        for p, q in zip(reference.networks[role].parameters(), fast.networks[role].parameters()):
            assert torch.equal(p, q)
    generator = torch.Generator().manual_seed(0)
    for step in range(6):  # identity loss in steps 0-2, not in 3-5; learning-rate decay from step 4
        got = one_iteration_from_the_reference_state(reference, fast, config, generator, step)
        assert not any(value.requires_grad for value in got.values())
        assert (float(got["identity"]) > 0) == (step < 3)
        assert fast.step == reference.step == step + 1
        assert fast.learning_rates() == reference.learning_rates()
        assert_same_state(reference, fast, lr=config.training.generator_lr)


def test_compiled_train_step_matches_the_reference_iteration_across_the_identity_cut_off():
    """training.compile (torch.compile of the four networks' calls, Inductor on the CPU here; on CUDA the
    same code path takes CUDA graphs with "reduce-overhead"): same iteration, same tolerances."""
    torch._dynamo.reset()
    config = load_config("debug", [
        "training.identity_steps=2", "training.iterations=8", "training.lr_decay_start=3", "training.batch_size=1",
        "model.generator_kwargs.base_channels=16", "model.discriminator_kwargs.base_channels=16",
    ])
    reference = Trainer(config)
    data = config.to_dict()
    data["training"]["compile"] = "default"
    compiled = Trainer(Config.from_dict(data))
    assert all(compiled.calls[role] is not compiled.networks[role] for role in ROLES)
    assert all(reference.calls[role] is reference.networks[role] for role in ROLES)
    generator = torch.Generator().manual_seed(0)
    for step in range(4):  # identity loss in steps 0-1, not in 2-3; learning-rate decay from step 3
        got = one_iteration_from_the_reference_state(reference, compiled, config, generator, step)
        assert (float(got["identity"]) > 0) == (step < 2)
        assert_same_state(reference, compiled, lr=config.training.generator_lr)
    torch._dynamo.reset()


def test_bf16_autocast_step_matches_the_reference_in_bf16_and_keeps_fp32_state(caplog):
    """training.amp on the CPU (the code path of bf16 on CUDA): the fast step and the reference step,
    both under autocast, agree within bf16 rounding; an fp32 step from the same state differs (autocast
    is really on) by bf16's size; parameters, gradients and Adam's moments stay fp32. Measured here:
    losses equal, a parameter's gradient <= 1.0e-2 relative to the bf16 reference's; fp32 against bf16,
    losses <= 5.6e-2 and all gradients together 0.11 (the generators' cycle L1 gradient is a sign)."""
    overrides = ["training.identity_steps=2", "training.iterations=8", "training.lr_decay_start=3", "training.batch_size=2"]
    config = load_config("debug", [*overrides, "training.amp=true"])
    reference, fast, full = Trainer(config), Trainer(config), Trainer(load_config("debug", overrides))
    assert reference.amp and fast.amp and not full.amp
    # a CPU without native bf16 says that autocast will be slow there
    assert ("emulated" in caplog.text) == (not cpu_has_native_bf16())
    generator = torch.Generator().manual_seed(0)
    bf16_effect = 0.0
    for step in range(3):  # identity loss in steps 0-1, not in 2
        fast.copy_state_from(reference)
        full.copy_state_from(reference)
        x, y = crops(config, generator)
        with gemm_convolutions(False):
            expected = reference_train_step(reference, x, y)
        got, fp32 = fast.train_step(x, y), full.train_step(x, y)
        for key in expected:
            assert got[key].dtype == torch.float32 and torch.isfinite(got[key]), key
            assert float(got[key]) == pytest.approx(float(expected[key]), rel=2e-3, abs=1e-6), (step, key)
            if float(expected[key]):
                bf16_effect = max(bf16_effect, abs(float(fp32[key]) / float(expected[key]) - 1))
        squared_error = squared_norm = 0.0
        for role in ROLES:
            params = zip(reference.networks[role].named_parameters(), fast.networks[role].parameters(), full.networks[role].parameters())
            for (name, p), q, r in params:
                assert p.dtype == q.dtype == q.grad.dtype == torch.float32, f"{role}.{name}"
                error = float((q.grad - p.grad).norm() / p.grad.norm().clamp_min(1e-12))
                assert error <= 5e-2, f"gradient of {role}.{name}: relative L2 error {error:.2e}"
                moments = fast.optimizers[role].state[q]
                assert moments["exp_avg"].dtype == moments["exp_avg_sq"].dtype == torch.float32
                squared_error += float((r.grad - p.grad).square().sum())
                squared_norm += float(r.grad.square().sum())
        assert 1e-3 < (squared_error / squared_norm) ** 0.5 < 0.3, step  # bf16's effect, all gradients together
    assert 1e-4 < bf16_effect < 0.15


def test_each_generator_output_is_computed_once_and_independent_passes_share_a_call():
    config = load_config("debug", ["training.identity_steps=1"])
    trainer = Trainer(config)
    calls: dict[str, list[int]] = {role: [] for role in ROLES}
    for role in ROLES:
        trainer.networks[role].register_forward_pre_hook(lambda m, args, role=role: calls[role].append(args[0].shape[0]))
    n = config.training.batch_size
    generator = torch.Generator().manual_seed(0)
    trainer.train_step(*crops(config, generator))  # with the identity loss
    assert calls == {"G_ab": [2 * n, n], "G_ba": [3 * n], "D_a": [2 * n], "D_b": [2 * n]}
    for role in ROLES:
        calls[role].clear()
    trainer.train_step(*crops(config, generator))  # after the cut-off
    assert calls == {"G_ab": [n, n], "G_ba": [2 * n], "D_a": [2 * n], "D_b": [2 * n]}


def test_batches_of_different_shapes_take_the_reference_path():
    config = load_config("debug")
    reference, fast = Trainer(config), Trainer(config)
    generator = torch.Generator().manual_seed(1)
    x, _ = crops(config, generator, batch=2)
    _, y = crops(config, generator, batch=1)
    expected = reference_train_step(reference, x, y)
    got = fast.train_step(x, y)
    for key in expected:
        assert float(got[key]) == pytest.approx(float(expected[key]), rel=1e-5, abs=1e-7), key


def test_train_step_keeps_gradient_buffers_and_switches_adam_to_the_fused_kernel():
    config = load_config("debug")
    trainer = Trainer(config)
    generator = torch.Generator().manual_seed(2)
    trainer.train_step(*crops(config, generator))
    weight = trainer.networks["D_a"].body[3].conv.weight
    buffer = weight.grad
    trainer.train_step(*crops(config, generator))
    assert weight.grad is buffer  # written in place: no weight-sized allocation per iteration
    assert all(g["fused"] for opt in trainer.optimizers.values() for g in opt.param_groups)


# --- the GEMM convolution and the weight-gradient sink ------------------------------------------------


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((2, 3, 7, 16), (6, 3), (1, 2), (2, 3, 1, 1)),  # the discriminator's last layer: TF "same", even kernel
        ((3, 4, 12, 32), (3, 3), (2, 2), (1, 1, 1, 1)),
        ((1, 2, 5, 9), (3, 3), (1, 2), (0, 0, 0, 0)),
        ((2, 5, 1, 17), (1, 5), (1, 2), (0, 0, 2, 2)),  # 1-D as height 1, odd length
    ],
)
def test_gemm_conv2d_equals_conv2d_and_its_gradients(shape, kernel, stride, padding):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn((4, shape[1], *kernel), generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    top, bottom, left, right = padding
    expected = F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride)
    got = gemm_conv2d(x, w, b, stride, padding)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    for a, e in zip(torch.autograd.grad(got, (x, w, b), upstream), torch.autograd.grad(expected, (x, w, b), upstream)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, w, b: gemm_conv2d(x, w, b, stride, padding), (x, w, b))


@pytest.mark.parametrize(
    "shape, out_channels, kernel, padding",
    [
        ((2, 8, 24, 20), 1, (5, 15), (2, 2, 7, 7)),  # the VC2 / MaskCycleGAN-VC generator's output layer
        ((3, 16, 3, 8), 1, (1, 3), (0, 0, 1, 1)),  # a discriminator's one-channel head
        ((1, 12, 5, 6), 3, (3, 2), (1, 0, 0, 1)),  # several outputs, uneven padding, even kernel
    ],
)
def test_tap_conv2d_equals_conv2d_and_its_gradients(shape, out_channels, kernel, padding):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn((out_channels, shape[1], *kernel), generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(out_channels, generator=g, dtype=torch.float64, requires_grad=True)
    top, bottom, left, right = padding
    expected = F.conv2d(F.pad(x, (left, right, top, bottom)), w, b)
    got = tap_conv2d(x, w, b, padding)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    for a, e in zip(torch.autograd.grad(got, (x, w, b), upstream), torch.autograd.grad(expected, (x, w, b), upstream)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, w, b: tap_conv2d(x, w, b, padding), (x, w, b))


def test_tap_conv2d_under_a_sink_gives_gradients_to_its_params_only():
    g = torch.Generator().manual_seed(5)
    x = torch.randn((2, 8, 6, 10), generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn((1, 8, 3, 5), generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, generator=g, dtype=torch.float64, requires_grad=True)
    padding = (1, 1, 2, 2)
    expected = torch.autograd.grad(tap_conv2d(x, w, b, padding).square().sum(), (x, w, b))
    for wanted in (w, b):
        with WeightGradientSink([wanted]):
            got = torch.autograd.grad(tap_conv2d(x, w, b, padding).square().sum(), (x, w, b), allow_unused=True)
        torch.testing.assert_close(got[0], expected[0])
        for param, grad, reference in zip((w, b), got[1:], expected[1:]):
            if param is wanted:
                torch.testing.assert_close(grad, reference)
            else:
                assert grad is None


def test_output_layers_take_the_tap_path_in_cpu_training():
    """The one-channel output layers of the 2-D networks run as tap_conv2d, the others as gemm_conv2d."""
    from cyclegan_vc.models import build_generator
    from cyclegan_vc.models.gemm import _TapConvFunction

    G = build_generator("cyclegan_vc2", in_channels=24, base_channels=8, residual_channels=16, n_residual_blocks=1)
    x = torch.randn(2, 24, 16)
    out = G(x)
    seen, names, stack = set(), [], [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            names.append(type(node).__name__)
            stack += [f for f, _ in node.next_functions]
    assert names.count(f"{_TapConvFunction.__name__}Backward") == 1  # the output layer; the 2-D layers before it are GEMMs
    assert names.count("_GemmConvFunctionBackward") == 7  # input, 2 downsampling, 2 residual, 2 upsampling
    with gemm_convolutions(False):
        torch.testing.assert_close(G(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("zero", [(0,), (3,), (0, 1), (0, 4), (1, 3), (0, 1, 2, 3, 4)])
def test_gemm_conv2d_input_gradient_of_items_with_a_zero_output_gradient(zero):
    """Items whose output gradient is all zeros get a zero input gradient without a product of their own:
    the gradients equal conv2d's, wherever the zero items lie (ends, middle, all), and the input-gradient
    product covers only the span of the live items."""
    from torch.utils.flop_counter import FlopCounterMode

    from cyclegan_vc.models.gemm import live_samples

    g = torch.Generator().manual_seed(7)
    x = torch.randn((5, 3, 6, 10), generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn((4, 3, 3, 3), generator=g, dtype=torch.float64)  # no weight gradient: count the input's alone
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1)), w, None, (1, 2))
    got = gemm_conv2d(x, w, None, (1, 2), (1, 1, 1, 1))
    upstream = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    upstream[list(zero)] = 0
    live = [i for i in range(5) if i not in zero]
    assert live_samples(upstream) == ((live[0], live[-1] + 1) if live else (0, 0))
    with FlopCounterMode(display=False) as counter:
        (gx,) = torch.autograd.grad(got, (x,), upstream, retain_graph=True)
    span = (live[-1] + 1 - live[0]) if live else 0
    assert counter.get_total_flops() == 2 * 4 * 27 * span * 6 * 5  # (C_in k, C_out) x (C_out, span H_out W_out)
    torch.testing.assert_close(gx, torch.autograd.grad(expected, (x,), upstream)[0], rtol=1e-12, atol=1e-12)
    assert not gx[list(zero)].any()
    nan = torch.zeros(3, 2)
    nan[1, 0] = float("nan")
    assert live_samples(nan) == (1, 2)  # a NaN is not a zero: it is passed on


def test_gemm_conv1d_equals_conv1d():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 19, generator=g, dtype=torch.float64)
    w = torch.randn(6, 5, 5, generator=g, dtype=torch.float64)
    got = gemm_conv2d(x, w, None, (1, 2), (0, 0, 2, 2))
    torch.testing.assert_close(got, F.conv1d(x, w, None, 2, 2), rtol=1e-12, atol=1e-12)


def test_weight_gradient_sink_defers_the_gradients_it_wants_and_drops_the_others():
    g = torch.Generator().manual_seed(5)
    w1 = torch.randn(4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x, z = torch.randn(2, 3, 8, generator=g, dtype=torch.float64), torch.randn(1, 3, 8, generator=g, dtype=torch.float64)

    def loss():  # w1 used twice (batches of 2 and 1), w2 once
        h = gemm_conv2d(x, w1, b1, (1, 1), (0, 0, 1, 1))
        out = gemm_conv2d(h, w2, None, (1, 1), (0, 0, 1, 1))
        return out.square().sum() + gemm_conv2d(z, w1, b1, (1, 1), (0, 0, 1, 1)).sin().sum()

    gw1, gb1, gw2 = torch.autograd.grad(loss(), (w1, b1, w2))
    with WeightGradientSink([w1, b1]) as sink:
        deferred_w1, got_b1 = torch.autograd.grad(loss(), (w1, b1), allow_unused=True)
    assert deferred_w1 is None and w1 in sink and w2 not in sink  # w2 is not wanted: no work, no term
    torch.testing.assert_close(got_b1, gb1)
    out = torch.empty_like(w1)
    assert sink.gradient(w1, out=out) is out
    torch.testing.assert_close(out, gw1)
    assert w1 not in sink  # the terms are released
    with WeightGradientSink([w2]) as sink:
        torch.autograd.grad(loss(), (w2,), allow_unused=True)
    torch.testing.assert_close(sink.gradient(w2), gw2)


@pytest.mark.parametrize("dims", [1, 2])
def test_instance_norm_as_group_norm_equals_the_module(dims):
    from cyclegan_vc.models.layers import instance_norm

    g = torch.Generator().manual_seed(6)
    norm = (torch.nn.InstanceNorm1d if dims == 1 else torch.nn.InstanceNorm2d)(6, affine=True).double()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(6, generator=g, dtype=torch.float64) + 0.5)
        norm.bias.copy_(torch.randn(6, generator=g, dtype=torch.float64))
    shape = (3, 6, 10) if dims == 1 else (3, 6, 4, 5)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(shape, generator=g, dtype=torch.float64)
    expected, got = norm(x), instance_norm(norm, x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    params = (x, norm.weight, norm.bias)
    for a, e in zip(torch.autograd.grad(got, params, upstream), torch.autograd.grad(expected, params, upstream)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
