"""Checkpoints: round trips of both kinds, device independence, tamper detection, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cyclegan_vc import __version__
from cyclegan_vc.checkpoint import (
    FORMAT_VERSION,
    MODEL_KIND,
    STATE_KIND,
    CheckpointError,
    export_model,
    load_checkpoint,
    load_model,
    read_metadata,
    save_checkpoint,
)
from cyclegan_vc.features import FeatureConfig
from cyclegan_vc.models import build_generator
from cyclegan_vc.stats import SpeakerStats


def nested_payload() -> dict:
    """A payload with every supported kind of value, including an optimiser state (integer keys)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.999))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "networks": {"net": net.state_dict()},
        "optimizers": {"net": opt.state_dict()},
        "step": 7,
        "best": None,
        "score": 1.25,
        "flag": True,
        "name": "SF1",
        "list": [1, 2.5, "x", torch.arange(3, dtype=torch.int64)],
        "numpy": np.linspace(0.0, 1.0, 5),
        "numpy_scalar": np.float32(0.5),
        "dtypes": {
            "u8": torch.tensor([0, 255], dtype=torch.uint8),
            "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
            "scalar": torch.tensor(3.0),
            "transposed": torch.arange(6.0).reshape(2, 3).t(),  # non-contiguous
        },
    }


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


def write_state(path: Path) -> dict:
    payload = nested_payload()
    save_checkpoint(path, payload, STATE_KIND)
    return payload


# --- round trips -------------------------------------------------------------------------------------


def test_training_state_round_trip(tmp_path):
    path = tmp_path / "state.safetensors"
    payload = write_state(path)
    loaded = load_checkpoint(path, STATE_KIND)
    expected = dict(payload)
    expected["numpy"] = torch.from_numpy(payload["numpy"])  # arrays come back as tensors,
    expected["numpy_scalar"] = 0.5  # numpy scalars as Python numbers
    assert_same(expected["networks"], loaded["networks"])
    for key in ("step", "best", "score", "flag", "name", "list", "numpy", "numpy_scalar", "dtypes"):
        assert_same(expected[key], loaded[key])
    # the optimiser state (integer parameter keys) loads into a fresh optimiser
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    opt.load_state_dict(loaded["optimizers"]["net"])
    assert opt.param_groups[0]["lr"] == 1e-3 and tuple(opt.param_groups[0]["betas"]) == (0.5, 0.999)
    assert sorted(opt.state_dict()["state"]) == [0, 1]
    original = payload["optimizers"]["net"]["state"]
    for k in (0, 1):
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state_dict()["state"][k][name], original[k][name])
    meta = read_metadata(path)
    assert meta["kind"] == STATE_KIND and meta["format_version"] == str(FORMAT_VERSION)
    assert meta["package_version"] == __version__


def make_stats(offset: float) -> SpeakerStats:
    return SpeakerStats(
        mcep_mean=np.linspace(-1, 1, 24) + offset, mcep_std=np.linspace(0.5, 1.5, 24), logf0_mean=5.0 + offset,
        logf0_std=0.2, n_frames=100, n_voiced=60,
    )


def export_tiny(path: Path, step: int = 42) -> dict:
    torch.manual_seed(0)
    kwargs = {"in_channels": 24, "base_channels": 4, "n_residual_blocks": 1}
    generators = {"G_ab": build_generator("cyclegan_vc", **kwargs), "G_ba": build_generator("cyclegan_vc", **kwargs)}
    stats = {"A": make_stats(0.0), "B": make_stats(0.3)}
    export_model(
        path, generators, generator="cyclegan_vc", generator_kwargs=generators["G_ab"].config, stats=stats,
        features=FeatureConfig(f0_method="dio"), speakers={"A": "SF1", "B": "TM3"}, step=step,
        config={"model": {"generator": "cyclegan_vc"}}, metrics={"score": 6.5},
    )
    return {"generators": generators, "stats": stats}


def test_conversion_model_round_trip(tmp_path):
    path = tmp_path / "model.safetensors"
    original = export_tiny(path)
    model = load_model(path)
    assert model.speakers == {"A": "SF1", "B": "TM3"} and model.step == 42 and model.metrics == {"score": 6.5}
    assert model.features == FeatureConfig(f0_method="dio") and model.package_version == __version__
    assert model.generator == "cyclegan_vc" and model.generator_kwargs["base_channels"] == 4
    for role in ("A", "B"):
        assert model.stats[role].to_dict() == original["stats"][role].to_dict()
    x = torch.randn(1, 24, 16)
    for role in ("G_ab", "G_ba"):
        net = model.generators[role]
        assert not net.training
        for (k, v), (k2, v2) in zip(net.state_dict().items(), original["generators"][role].state_dict().items()):
            assert k == k2 and torch.equal(v, v2)
        with torch.no_grad():
            torch.testing.assert_close(net(x), original["generators"][role].eval()(x), rtol=0, atol=0)
    # a run directory resolves to model_latest, else model_best
    run = tmp_path / "run"
    run.mkdir()
    export_tiny(run / "model_best.safetensors", step=3)
    assert load_model(run).step == 3
    export_tiny(run / "model_latest.safetensors", step=5)
    assert load_model(run).step == 5
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="model_latest"):
        load_model(empty)


# --- devices -----------------------------------------------------------------------------------------


def header(path: Path) -> str:
    raw = path.read_bytes()
    return raw[8 : 8 + int.from_bytes(raw[:8], "little")].decode()


def test_checkpoints_hold_no_device_and_load_onto_the_requested_device(tmp_path):
    # What is simulated: this machine has no GPU, so a file cannot be written from CUDA tensors here (the
    # test below does that where CUDA exists). Checked instead: (1) the file records no device at all (the
    # safetensors header holds dtype/shape/offsets only and our metadata no device entry), so where the
    # tensors lived when saved cannot matter; (2) loading honours `device=` for a device type other than
    # the CPU (the tensor-free `meta` device) as well as for "cpu" given as a string or a torch.device.
    path = tmp_path / "state.safetensors"
    write_state(path)
    text = header(path)
    assert "cuda" not in text and "device" not in text
    assert set(json.loads(text)["__metadata__"]) == {"format", "format_version", "kind", "package_version", "structure", "sha256"}
    for device in ("cpu", torch.device("cpu")):
        loaded = load_checkpoint(path, STATE_KIND, device=device)
        assert loaded["networks"]["net"]["weight"].device.type == "cpu"
    on_meta = load_checkpoint(path, STATE_KIND, device="meta")
    assert on_meta["networks"]["net"]["weight"].device.type == "meta"
    assert on_meta["dtypes"]["bf16"].dtype == torch.bfloat16 and on_meta["step"] == 7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to write a checkpoint from GPU tensors")
def test_checkpoint_written_from_cuda_tensors_loads_on_cpu(tmp_path):
    net = torch.nn.Linear(3, 2).cuda()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3, device="cuda")).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "gpu.safetensors", {"net": net.state_dict(), "opt": opt.state_dict()}, STATE_KIND)
    loaded = load_checkpoint(path, STATE_KIND, device="cpu")
    assert loaded["net"]["weight"].device.type == "cpu"
    assert torch.equal(loaded["net"]["weight"], net.weight.detach().cpu())
    assert "cuda" not in header(path)


# --- refused files -----------------------------------------------------------------------------------


def refused(path: Path, kind: str = STATE_KIND, match: str | None = None) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path, kind)
    assert str(path) in str(info.value) and info.value.path == path
    return info.value


def rewrite(path: Path, tensors: dict | None = None, **metadata_changes: str) -> None:
    """Re-save a checkpoint's tensors and metadata with some entries changed (a hand-edited file)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        stored = {name: handle.get_tensor(name) for name in handle.keys()}
    metadata.update(metadata_changes)
    save_file(stored if tensors is None else tensors(stored), str(path), metadata=metadata)


def test_a_flipped_byte_of_tensor_data_is_refused(tmp_path):
    path = tmp_path / "state.safetensors"
    write_state(path)
    raw = bytearray(path.read_bytes())
    data_start = 8 + int.from_bytes(raw[:8], "little")
    assert len(raw) > data_start + 16
    raw[data_start + (len(raw) - data_start) // 2] ^= 0x01  # one bit of one tensor
    path.write_bytes(bytes(raw))
    refused(path, match="sha256")


def test_edited_metadata_and_missing_tensors_are_refused(tmp_path):
    path = tmp_path / "state.safetensors"
    write_state(path)
    structure = json.loads(read_metadata(path)["structure"])
    assert structure["step"] == 7
    structure["step"] = 8  # a number kept in the metadata, not in a tensor
    rewrite(path, structure=json.dumps(structure, separators=(",", ":")))
    refused(path, match="sha256")

    write_state(path)
    rewrite(path, package_version="0.0.1")
    refused(path, match="sha256")

    write_state(path)
    rewrite(path, tensors=lambda t: {k: v for k, v in t.items() if k != "networks/net/bias"})
    refused(path, match="sha256")


def test_other_format_versions_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "state.safetensors"
    write_state(path)
    rewrite(path, format_version="2")
    err = refused(path, match="format version '2' is not supported")
    assert "reads 1" in err.problem

    write_state(path)
    rewrite(path, format="something_else")
    refused(path, match="not a cyclegan-vc checkpoint")

    plain = tmp_path / "plain.safetensors"  # a valid safetensors file without our metadata
    save_file({"w": torch.zeros(2)}, str(plain))
    refused(plain, match="not a cyclegan-vc checkpoint")

    text = tmp_path / "notes.safetensors"
    text.write_text("this is not a checkpoint at all\n" * 10)
    refused(text, match="not a readable checkpoint")

    pickle = tmp_path / "model.pt"  # a torch.save file
    torch.save({"w": torch.zeros(2)}, pickle)
    refused(pickle, match="not a readable checkpoint")

    refused(tmp_path / "missing.safetensors", match="no such checkpoint file")


def test_truncated_files_are_refused(tmp_path):
    path = tmp_path / "state.safetensors"
    write_state(path)
    raw = path.read_bytes()
    data_start = 8 + int.from_bytes(raw[:8], "little")
    for cut in (len(raw) - 1, data_start + 3, data_start - 10, 5, 0):
        path.write_bytes(raw[:cut])
        refused(path)


def test_the_wrong_kind_is_refused(tmp_path):
    path = tmp_path / "state.safetensors"
    write_state(path)
    refused(path, kind=MODEL_KIND, match="is a 'training_state' checkpoint, expected 'conversion_model'")
    with pytest.raises(CheckpointError, match="expected 'conversion_model'"):
        load_model(path)
    model = tmp_path / "model.safetensors"
    export_tiny(model)
    refused(model, kind=STATE_KIND, match="is a 'conversion_model' checkpoint, expected 'training_state'")


# --- atomic writes -----------------------------------------------------------------------------------


def test_failed_writes_leave_no_file_and_keep_the_previous_one(tmp_path):
    path = tmp_path / "ckpt" / "state.safetensors"
    with pytest.raises(TypeError, match="object"):
        save_checkpoint(path, {"ok": torch.zeros(2), "bad": object()}, STATE_KIND)
    assert not path.exists() and list(path.parent.iterdir()) == []

    payload = write_state(path)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_checkpoint(path, {"step": 8, "bad": {1: "x", "a": 2}}, STATE_KIND)  # mixed key types
    assert path.read_bytes() == before
    assert load_checkpoint(path, STATE_KIND)["step"] == payload["step"]

    # a failure after the temporary file was fully written: the final rename onto a directory fails
    target = tmp_path / "ckpt" / "is_a_directory"
    target.mkdir()
    with pytest.raises(OSError):
        save_checkpoint(target, nested_payload(), STATE_KIND)
    assert sorted(p.name for p in path.parent.iterdir()) == ["is_a_directory", "state.safetensors"]
    assert list(target.iterdir()) == []
