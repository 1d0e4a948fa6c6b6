"""Training the successors' objectives: CycleGAN-VC2's two-step adversarial loss (second discriminators
D2_a, D2_b on the cycle-reconstructed features) and MaskCycleGAN-VC's filling in frames (FIF): networks,
optimisers, schedules, logged losses, where masks go, exact resume, and the fast step against the
reference step. Tiny networks (``--set`` overrides of the vc2-small and mask-small presets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cyclegan_vc.checkpoint import CheckpointError, load_model
from cyclegan_vc.config import load_config
from cyclegan_vc.conversion import VoiceConverter
from cyclegan_vc.models import gemm_convolutions
from cyclegan_vc.training import MaskSampler, Trainer, TrainingData, reference_train_step, train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "model.generator_kwargs.base_channels=4", "model.generator_kwargs.residual_channels=8",
    "model.generator_kwargs.n_residual_blocks=2", "model.discriminator_kwargs.base_channels=4",
    "training.batch_size=2", "training.crop_frames=32",
]
MASK_FRAMES = 8
SECOND = ("D2_a", "D2_b")
ALL_ROLES = ("G_ab", "G_ba", "D_a", "D_b", "D2_a", "D2_b")


def vc2(*overrides: str):
    return load_config("vc2-small", [*TINY, *overrides])


def mask(*overrides: str):
    return load_config("mask-small", [*TINY, f"training.mask_frames={MASK_FRAMES}", *overrides])


def crops(config, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    t = config.training
    shape = (t.batch_size, 24, t.crop_frames)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator) + 0.5


@pytest.fixture(scope="module")
def tiny_data(tiny_prepared) -> TrainingData:
    return TrainingData.from_prepared(tiny_prepared, eval_pairs=1)


def zero_runs(masks: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, length)`` of the zeros of each ``(1, T)`` mask; fails unless they are one run (or none)."""
    runs = []
    for row in masks[:, 0]:
        zeros = torch.nonzero(row == 0).flatten().tolist()
        assert set(row.unique().tolist()) <= {0.0, 1.0}
        assert zeros == list(range(zeros[0], zeros[0] + len(zeros))) if zeros else True, zeros
        runs.append((zeros[0] if zeros else 0, len(zeros)))
    return runs


# --- the second-step discriminators ------------------------------------------------------------------


def test_second_step_discriminators_are_networks_of_their_own_with_their_own_optimisers():
    trainer = Trainer(vc2())
    assert trainer.roles == ALL_ROLES
    seen: set[int] = set()
    for role in ALL_ROLES:
        params = {id(p) for p in trainer.networks[role].parameters()}
        assert params == {id(p) for p in trainer.optimizers[role].param_groups[0]["params"]}
        assert not params & seen, f"{role} shares parameters"
        seen |= params
    for first, second in (("D_a", "D2_a"), ("D_b", "D2_b")):
        a, b = trainer.networks[first], trainer.networks[second]
        assert type(a) is type(b) and a.config == b.config
        weights = [(p, q) for p, q in zip(a.parameters(), b.parameters()) if p.dim() > 1]  # the norms start at 1 and 0
        assert weights and not any(torch.equal(p, q) for p, q in weights), f"{second} starts as {first}"
    # one adversarial step: no second discriminators; the first four start from the same weights
    plain = Trainer(vc2("training.two_step_adversarial=false"))
    assert plain.roles == ALL_ROLES[:4] and set(plain.networks) == set(ALL_ROLES[:4])
    for role in plain.roles:
        assert all(torch.equal(p, q) for p, q in zip(plain.networks[role].parameters(), trainer.networks[role].parameters()))
    assert set(plain.train_step(*crops(plain.config, torch.Generator().manual_seed(0)))) == {
        "generator", "adversarial_ab", "adversarial_ba", "cycle", "identity", "discriminator", "discriminator_a", "discriminator_b"
    }


@pytest.mark.parametrize("make", [vc2, mask], ids=["vc2", "mask"])
def test_every_optimiser_steps_once_per_iteration_and_the_generator_loss_holds_the_second_step(make):
    config = make("training.identity_steps=2")
    trainer = Trainer(config)
    generator = torch.Generator().manual_seed(0)
    for iteration in (1, 2, 3):
        losses = {k: float(v) for k, v in trainer.train_step(*crops(config, generator)).items()}
        for role in ALL_ROLES:
            steps = {int(trainer.optimizers[role].state[p]["step"]) for p in trainer.networks[role].parameters()}
            assert steps == {iteration}, (role, steps)
        adversarial = losses["adversarial_ab"] + losses["adversarial_ba"] + losses["adversarial2_a"] + losses["adversarial2_b"]
        identity = 5.0 * losses["identity"] if iteration <= 2 else 0.0
        assert losses["generator"] == pytest.approx(adversarial + 10.0 * losses["cycle"] + identity, rel=1e-5)
        discriminators = sum(losses[f"discriminator{k}"] for k in ("_a", "_b", "2_a", "2_b"))
        assert losses["discriminator"] == pytest.approx(discriminators, rel=1e-5)
        assert all(losses[k] > 0 for k in ("adversarial2_a", "adversarial2_b", "discriminator2_a", "discriminator2_b"))


def test_each_optimiser_follows_the_schedule_with_its_own_base_rate():
    config = vc2("training.iterations=6", "training.lr_decay_start=2", "training.generator_lr=3e-4",
                 "training.discriminator_lr=1e-4", "training.discriminator_betas=[0.4, 0.99]")
    trainer = Trainer(config)
    for role in SECOND:
        assert tuple(trainer.optimizers[role].param_groups[0]["betas"]) == (0.4, 0.99)
    generator = torch.Generator().manual_seed(1)
    for step, factor in {1: 1.0, 2: 1.0, 3: 0.75, 4: 0.5, 5: 0.25, 6: 0.0}.items():
        trainer.train_step(*crops(config, generator))
        lrs = trainer.learning_rates()
        assert set(lrs) == set(ALL_ROLES)
        for role in ALL_ROLES:
            base = 3e-4 if role.startswith("G") else 1e-4
            assert lrs[role] == pytest.approx(base * factor, abs=1e-15), (step, role)
    before = {r: [p.detach().clone() for p in trainer.networks[r].parameters()] for r in ALL_ROLES}
    trainer.train_step(*crops(config, generator))  # rate 0 is the rate each optimiser applies
    for role in ALL_ROLES:
        assert all(torch.equal(a, p) for a, p in zip(before[role], trainer.networks[role].parameters())), role


def test_the_second_step_losses_and_rates_are_logged_to_tensorboard(tiny_prepared, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tiny_prepared, run, preset="vc2-small", iterations=2, device="cpu", progress=False,
          overrides=[*TINY, "training.log_interval=1", "training.validation_interval=0"])
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for key in ("adversarial2_a", "adversarial2_b", "discriminator2_a", "discriminator2_b", "adversarial_ab", "discriminator"):
        assert f"loss/{key}" in tags, key
        assert [e.step for e in events.Scalars(f"loss/{key}")] == [1, 2]
    assert {"lr/D2_a", "lr/D2_b", "lr/D_a", "lr/G_ab"} <= tags


# --- filling in frames -------------------------------------------------------------------------------


def test_mask_sampler_draws_one_run_of_0_to_n_zeroed_frames_reproducibly():
    sampler = MaskSampler(MASK_FRAMES, seed=3)
    masks = sampler.sample(400, 32)
    assert masks.shape == (400, 1, 32) and masks.dtype == torch.float32
    runs = zero_runs(masks)
    lengths = [length for _, length in runs]
    assert min(lengths) == 0 and max(lengths) == MASK_FRAMES  # both ends of 0..N reached
    assert all(start + length <= 32 for start, length in runs)
    assert len({start for start, length in runs if length}) > 10  # the run moves
    again = MaskSampler(MASK_FRAMES, seed=3)
    assert torch.equal(again.sample(400, 32), masks)
    state = sampler.state_dict()
    following = sampler.sample(5, 32)
    again.load_state_dict(state)
    assert torch.equal(again.sample(5, 32), following)
    assert not torch.equal(MaskSampler(MASK_FRAMES, seed=4).sample(400, 32), masks)
    with pytest.raises(ValueError, match="does not fit"):
        MaskSampler(32, 0).sample(1, 32)


def mask_planes(net: torch.nn.Module) -> list[torch.Tensor]:
    """Record the mask plane (N, T) of every call of a MaskCycleGAN-VC generator (its first layer's input)."""
    seen: list[torch.Tensor] = []
    net.input.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 1].detach().clone()))
    return seen


@pytest.mark.parametrize("step", ["fast", "reference"])
def test_masks_reach_only_the_forward_passes_of_the_source_crops(step):
    config = mask("training.identity_steps=1")
    trainer = Trainer(config)
    seen = {role: mask_planes(trainer.networks[role]) for role in ("G_ab", "G_ba")}
    drawn: list[torch.Tensor] = []
    sample = trainer.masks.sample
    trainer.masks.sample = lambda n, frames: drawn.append(sample(n, frames)) or drawn[-1]
    n = config.training.batch_size
    generator = torch.Generator().manual_seed(2)
    for _ in range(2):  # with the identity loss, then without
        drawn.clear()
        for planes in seen.values():
            planes.clear()
        x, y = crops(config, generator)
        if step == "fast":
            trainer.train_step(x, y)
        else:
            mask_a, mask_b = trainer.masks.sample(n, 32), trainer.masks.sample(n, 32)
            reference_train_step(trainer, x, y, mask_a, mask_b)
        mask_a, mask_b = drawn
        assert all(0 <= length <= MASK_FRAMES for _, length in zero_runs(torch.cat(drawn)))
        for role, source_mask in (("G_ab", mask_a), ("G_ba", mask_b)):
            planes = torch.cat(seen[role])  # every sample through this generator, each call's rows
            rows = planes.shape[1]  # the feature rows of the plane: the mask repeats over them
            expected = torch.ones(planes.shape[0], 32)
            # the source crops come first in the fast step's batched call and are the reference's first call
            expected[:n] = source_mask[:, 0]
            assert torch.equal(planes, expected[:, None, :].expand(-1, rows, -1)), role


def test_conversion_uses_all_ones_masks_whatever_mask_frames_says(tiny_data, tmp_path):
    source = tiny_data.eval_pairs[0][0].mcep
    outputs = []
    for frames in (4, 20):
        trainer = Trainer(mask(f"training.mask_frames={frames}"), tiny_data)
        planes = mask_planes(trainer.generator("G_ab"))
        outputs.append(trainer.convert_mcep(source, "A2B"))
        assert planes and all(bool((p == 1).all()) for p in planes)
    np.testing.assert_array_equal(outputs[0], outputs[1])
    # the exported model converts the same, and its generator too sees a mask of ones
    trainer.export(tmp_path / "model.safetensors")
    converter = VoiceConverter.load(tmp_path / "model.safetensors", device="cpu")
    planes = mask_planes(converter.generators["G_ab"])
    np.testing.assert_allclose(converter.convert_mcep(source, "A2B"), outputs[0], rtol=1e-6, atol=1e-6)
    assert planes and all(bool((p == 1).all()) for p in planes)
    assert load_model(tmp_path / "model.safetensors").generator == "maskcyclegan_vc"


# --- exact resume ------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [vc2, mask], ids=["vc2-two-step", "mask-fif"])
def test_resume_is_bit_identical_with_the_successors_objectives(make, tiny_data, tmp_path):
    config = make("training.iterations=8", "training.identity_steps=3", "training.lr_decay_start=2")
    straight = Trainer(config, tiny_data)
    straight_losses = [straight.train_step() for _ in range(6)]
    first = Trainer(config, tiny_data)
    first_losses = [first.train_step() for _ in range(3)]
    first.save(tmp_path / "state.safetensors")
    del first
    torch.manual_seed(12345)
    resumed = Trainer(config, tiny_data)
    resumed.load(tmp_path / "state.safetensors")
    resumed_losses = [resumed.train_step() for _ in range(3)]
    for a, b in zip(straight_losses, first_losses + resumed_losses):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.step == straight.step == 6
    for role in ALL_ROLES:
        for (name, p), q in zip(straight.networks[role].state_dict().items(), resumed.networks[role].state_dict().values()):
            assert torch.equal(p, q), f"{role}.{name} differs after resume"
        s_opt, r_opt = straight.optimizers[role].state_dict(), resumed.optimizers[role].state_dict()
        assert s_opt["param_groups"] == r_opt["param_groups"]
        for k, state in s_opt["state"].items():
            assert all(torch.equal(v, r_opt["state"][k][n]) for n, v in state.items()), f"{role} optimiser state {k}"
    for role in ("G_ab", "G_ba"):
        assert all(torch.equal(p, q) for p, q in zip(straight.generator(role).parameters(), resumed.generator(role).parameters()))
    if straight.masks is not None:
        assert torch.equal(straight.masks.generator.get_state(), resumed.masks.generator.get_state())


def test_a_state_without_the_second_step_or_the_masks_is_refused(tmp_path):
    Trainer(vc2("training.two_step_adversarial=false")).save(tmp_path / "one_step.safetensors")
    with pytest.raises(CheckpointError, match="two_step_adversarial"):
        Trainer(vc2()).load(tmp_path / "one_step.safetensors")
    Trainer(vc2()).save(tmp_path / "two_step.safetensors")
    with pytest.raises(CheckpointError, match="two_step_adversarial"):
        Trainer(vc2("training.two_step_adversarial=false")).load(tmp_path / "two_step.safetensors")


# --- the fast step against the reference step --------------------------------------------------------


@pytest.mark.parametrize("make", [vc2, mask], ids=["vc2-two-step", "mask-fif"])
def test_fast_step_matches_the_reference_step_across_the_identity_cut_off(make):
    """Tolerances as tests/test_fast_step.py: losses relative 1e-4; gradients relative L2 2e-3; weights
    elementwise rtol 1e-4, atol two learning rates (Adam's first steps move an element by about lr).
    A gradient's error is relative to at least 1e-5 of its network's whole gradient: the 2-1-2D
    generator's last residual block's norm bias has a gradient of 0 in exact arithmetic (the next
    instance norm removes any constant it adds), so both steps give float noise there."""
    config = make("training.identity_steps=2", "training.iterations=8", "training.lr_decay_start=3")
    reference, fast = Trainer(config), Trainer(config)
    lr = config.training.generator_lr
    generator = torch.Generator().manual_seed(0)
    n = config.training.batch_size
    for step in range(4):  # identity loss in steps 0-1, not in 2-3; learning-rate decay from step 3
        fast.copy_state_from(reference)
        x, y = crops(config, generator)
        masks = (reference.masks.sample(n, 32), reference.masks.sample(n, 32)) if reference.masks else (None, None)
        with gemm_convolutions(False):
            expected = reference_train_step(reference, x, y, *masks)
        got = fast.train_step(x, y, *masks)
        assert got.keys() == expected.keys() and {"adversarial2_a", "discriminator2_b"} <= set(got)
        for key in expected:
            assert float(got[key]) == pytest.approx(float(expected[key]), rel=1e-4, abs=1e-7), (step, key)
        assert fast.step == reference.step == step + 1 and fast.learning_rates() == reference.learning_rates()
        for role in ALL_ROLES:
            whole = sum(float(p.grad.square().sum()) for p in reference.networks[role].parameters()) ** 0.5
            for (name, p), q in zip(reference.networks[role].named_parameters(), fast.networks[role].parameters()):
                where = f"{step}: {role}.{name}"
                assert (p.grad is None) == (q.grad is None), where
                if p.grad is not None:
                    error = float((q.grad - p.grad).norm()) / max(float(p.grad.norm()), 1e-5 * whole)
                    assert error <= 2e-3, f"gradient of {where}: relative L2 error {error:.2e}"
                torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-4, atol=2 * lr, msg=lambda m: f"{where}: {m}")
                assert int(reference.optimizers[role].state[p]["step"]) == int(fast.optimizers[role].state[q]["step"])
