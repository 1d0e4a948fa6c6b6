"""The typed training configuration: dataclasses, YAML presets and ``key=value`` overrides.

A configuration has two sections:

- ``model``: the generator and discriminator, each a registry name plus the constructor's keyword
  arguments (:mod:`cyclegan_vc.models`);
- ``training``: everything the optimisation needs (crops, losses, optimisers, schedule, intervals).

Feature settings are not part of it: they come from the prepared data and travel with the exported
model. The defaults of these dataclasses are the paper's recipe, and the ``paper`` preset equals them.
Presets are YAML files shipped inside the package (``cyclegan_vc/configs/<name>.yaml``: ``paper``,
``small``, ``debug``; CycleGAN-VC2 ``vc2``, ``vc2-small``; MaskCycleGAN-VC ``mask``, ``mask-small``);
:func:`load_config` also takes the path of any YAML file of the same form.

YAML is read with ``yaml.safe_load``. A file may give only some keys: dataclass sections are merged
key by key onto the defaults, while a ``*_kwargs`` mapping replaces the default one as a whole (missing
arguments take the constructor's defaults). Unknown keys are an error naming the key and the valid ones.
Numbers are accepted in any YAML spelling (``1e-4`` is a string to YAML 1.1; it is converted here).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from .models import check_kwargs, resolve_kwargs
from .utils import atomic_write_bytes

__all__ = [
    "PRESETS",
    "COMPILE_MODES",
    "SHORT_UTTERANCE_POLICIES",
    "Config",
    "ConfigError",
    "ModelConfig",
    "TrainingConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_override",
    "preset_path",
    "read_preset",
    "save_config",
]

PRESETS = ("paper", "small", "debug", "vc2", "vc2-small", "mask", "mask-small")
SHORT_UTTERANCE_POLICIES = ("pad", "skip")
#: ``training.compile``: ``"none"`` (eager), or a ``torch.compile`` mode for the four networks' calls in
#: the training step (``"reduce-overhead"`` adds CUDA graphs on CUDA).
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
#: Informational top-level keys that a run directory's ``config.yaml`` carries besides the config.
RUN_INFO_KEYS = ("package_version",)


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type or inconsistent values."""


def _paper_generator_kwargs() -> dict[str, Any]:
    return {"in_channels": 24, "base_channels": 128, "n_residual_blocks": 6}


def _paper_discriminator_kwargs() -> dict[str, Any]:
    return {"in_height": 24, "in_frames": 128, "base_channels": 128, "head": "linear"}


@dataclass
class ModelConfig:
    """Networks by registry name with their constructor keyword arguments."""

    generator: str = "cyclegan_vc"
    generator_kwargs: dict[str, Any] = field(default_factory=_paper_generator_kwargs)
    discriminator: str = "cyclegan_vc"
    discriminator_kwargs: dict[str, Any] = field(default_factory=_paper_discriminator_kwargs)


@dataclass
class TrainingConfig:
    """Optimisation settings; the defaults are the paper's.

    The learning rates are constant for ``lr_decay_start`` iterations, then decay linearly to zero at
    ``iterations`` (no decay when ``iterations <= lr_decay_start``). The identity-mapping loss is used
    while the number of completed iterations is below ``identity_steps``.
    """

    seed: int = 0
    iterations: int = 400_000
    batch_size: int = 1
    crop_frames: int = 128  # frames per random crop; a multiple of 4
    generator_lr: float = 2e-4
    discriminator_lr: float = 1e-4
    generator_betas: tuple[float, float] = (0.5, 0.999)
    discriminator_betas: tuple[float, float] = (0.5, 0.999)
    lr_decay_start: int = 200_000
    cycle_weight: float = 10.0
    identity_weight: float = 5.0
    identity_steps: int = 10_000
    short_utterances: str = "pad"  # utterances shorter than a crop: "pad" (mirror) or "skip", with a warning
    log_interval: int = 100  # iterations between TensorBoard scalars / progress-bar losses
    validation_interval: int = 5_000  # iterations between validations; 0 = only at the end
    validation_utterances: int = 2  # held-out utterances converted per direction
    checkpoint_interval: int = 5_000  # iterations between state_latest / model_latest saves
    milestone_interval: int = 100_000  # iterations between kept state_XXXXXXXX copies; 0 = none
    amp: bool = False  # bf16 autocast (CUDA, CPU); fp32 parameters, gradients, losses and Adam
    # torch.compile of the networks in the training step: "none" (eager), "default", "reduce-overhead"
    # (CUDA graphs on CUDA), "max-autotune"; the same computation, with plain convolutions inside.
    compile: str = "none"
    # Deviation (0 = the paper): validate and export an exponential moving average of the generators'
    # weights, ``ema = decay * ema + (1 - decay) * weights`` after every iteration (training is unchanged).
    generator_ema: float = 0.0
    # CycleGAN-VC2: a second pair of discriminators judges the cycle-reconstructed features (two-step
    # adversarial loss); the CycleGAN-VC recipe has none.
    two_step_adversarial: bool = False
    # MaskCycleGAN-VC filling in frames: each training source crop gets a run of 0..mask_frames zeroed
    # frames, given to the generator as a mask channel; 0 = no masking. Needs model.generator maskcyclegan_vc.
    mask_frames: int = 0


@dataclass
class Config:
    """The whole training configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), the form written to YAML and checkpoints."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "Config":
        return config_from_dict(data, source)

    def validate(self) -> "Config":
        """Check values and cross-section consistency; return ``self`` or raise :class:`ConfigError`."""
        t, m = self.training, self.model
        problems = []
        for name in ("iterations", "batch_size", "log_interval", "validation_utterances"):
            if getattr(t, name) < 1:
                problems.append(f"training.{name} must be >= 1, got {getattr(t, name)}")
        for name in ("lr_decay_start", "identity_steps", "validation_interval", "checkpoint_interval", "milestone_interval"):
            if getattr(t, name) < 0:
                problems.append(f"training.{name} must be >= 0, got {getattr(t, name)}")
        if t.crop_frames < 8 or t.crop_frames % 4:
            problems.append(f"training.crop_frames must be a multiple of 4 and >= 8, got {t.crop_frames}")
        for name in ("generator_lr", "discriminator_lr"):
            if not getattr(t, name) > 0:
                problems.append(f"training.{name} must be > 0, got {getattr(t, name)}")
        for name in ("cycle_weight", "identity_weight"):
            if getattr(t, name) < 0:
                problems.append(f"training.{name} must be >= 0, got {getattr(t, name)}")
        for name in ("generator_betas", "discriminator_betas"):
            if not all(0.0 <= b < 1.0 for b in getattr(t, name)):
                problems.append(f"training.{name} must lie in [0, 1), got {list(getattr(t, name))}")
        if not 0.0 <= t.generator_ema < 1.0:
            problems.append(f"training.generator_ema must lie in [0, 1) (0 = off), got {t.generator_ema}")
        if t.compile not in COMPILE_MODES:
            problems.append(f"training.compile must be one of {COMPILE_MODES}, got {t.compile!r}")
        if not 0 <= t.mask_frames < t.crop_frames:
            problems.append(f"training.mask_frames must lie in [0, crop_frames) = [0, {t.crop_frames}), got {t.mask_frames}")
        if (t.mask_frames > 0) != (m.generator == "maskcyclegan_vc"):
            problems.append(
                f"training.mask_frames > 0 (filling in frames) goes with model.generator maskcyclegan_vc and "
                f"that generator with mask_frames > 0; got mask_frames {t.mask_frames} and generator {m.generator!r}"
            )
        if t.short_utterances not in SHORT_UTTERANCE_POLICIES:
            problems.append(f"training.short_utterances must be one of {SHORT_UTTERANCE_POLICIES}, got {t.short_utterances!r}")
        try:
            gen = resolve_kwargs("generator", m.generator, m.generator_kwargs)
            dis = resolve_kwargs("discriminator", m.discriminator, m.discriminator_kwargs)
        except ValueError as exc:
            problems.append(f"model: {exc}")
        else:
            if dis.get("in_height") != gen.get("in_channels"):
                problems.append(
                    f"model.discriminator_kwargs.in_height ({dis.get('in_height')}) must equal "
                    f"model.generator_kwargs.in_channels ({gen.get('in_channels')})"
                )
            if "in_frames" in dis and dis.get("head") != "patch" and dis.get("in_frames") != t.crop_frames:
                problems.append(
                    f"model.discriminator_kwargs.in_frames ({dis.get('in_frames')}) must equal training.crop_frames "
                    f"({t.crop_frames}) with a fully connected discriminator head"
                )
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return self

    def with_feature_dim(self, dim: int) -> "Config":
        """A copy whose networks take ``dim`` features: ``model.generator_kwargs.in_channels`` and
        ``model.discriminator_kwargs.in_height`` set to ``dim`` (the prepared data's mel-cepstrum
        dimension, which the model must follow whatever a preset says). ``self`` when they already are."""
        m = self.model
        if m.generator_kwargs.get("in_channels") == dim and m.discriminator_kwargs.get("in_height") == dim:
            return self
        model = dataclasses.replace(
            m,
            generator_kwargs={**m.generator_kwargs, "in_channels": int(dim)},
            discriminator_kwargs={**m.discriminator_kwargs, "in_height": int(dim)},
        )
        return dataclasses.replace(self, model=model).validate()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


#: the largest integer a config accepts (iterations, sizes): beyond it a value is a typo, not a plan
MAX_INT = 10**12


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` as the annotated type, accepting YAML's spellings of numbers; else :class:`ConfigError`."""
    origin = typing.get_origin(annotation)
    wrong = ConfigError(f"{key}: expected {getattr(annotation, '__name__', annotation)}, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if annotation is int:
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, str):
            try:
                value = float(value.replace("_", ""))
            except ValueError:
                raise wrong from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            if abs(value) > MAX_INT:
                raise ConfigError(f"{key}: {value:.3g} is too large (at most {MAX_INT:.0e})")
            return value
        raise wrong
    if annotation is float:
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, str):
            try:
                value = float(value.replace("_", ""))
            except ValueError:
                raise wrong from None
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return float(value)
        raise wrong
    if annotation is str:
        if isinstance(value, str):
            return value
        raise wrong
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping with string keys, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported config annotation {annotation!r} for {key}")  # pragma: no cover


def _section(cls: type, data: Any, prefix: str, source: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {[f'{prefix}.{k}' for k in unknown]}; valid keys in {prefix}: {names}")
    values = {}
    for name in names:
        if name in data:
            values[name] = _coerce(data[name], hints[name], f"{source}: {prefix}.{name}")
    return cls(**values)


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """A validated :class:`Config` from a nested dict; missing keys take the defaults.

    ``source`` names the origin (a file) in error messages. The informational top-level key
    ``package_version`` (written into run directories) is ignored.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a configuration must be a mapping, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k not in RUN_INFO_KEYS}
    unknown = sorted(set(data) - {"model", "training"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {unknown}; valid keys: ['model', 'training']")
    model = _section(ModelConfig, data.get("model"), "model", source)
    for kind in ("generator", "discriminator"):
        try:
            check_kwargs(kind, getattr(model, kind), getattr(model, f"{kind}_kwargs"))
        except ValueError as exc:
            raise ConfigError(f"{source}: model.{kind}_kwargs: {exc}") from None
    config = Config(model=model, training=_section(TrainingConfig, data.get("training"), "training", source))
    try:
        return config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> ``(["a", "b"], value)`` with the value parsed as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. training.batch_size=4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse value: {exc}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of the nested dict ``data`` with each ``"a.b=value"`` override set (unknown keys fail later)."""
    data = _plain(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def preset_path(name: str) -> Path:
    """Path of the packaged preset ``name`` (one of :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {list(PRESETS)} (or give the path of a YAML file)")
    return Path(str(importlib.resources.files("cyclegan_vc").joinpath("configs", f"{name}.yaml")))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a config is YAML in UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: a configuration must be a mapping, got {type(data).__name__}")
    return data or {}


def read_preset(preset: str | os.PathLike = "paper") -> tuple[dict[str, Any], Path]:
    """The raw mapping of a preset (a name in :data:`PRESETS` or a YAML path) and the file it came from."""
    name = os.fspath(preset)
    if name in PRESETS:
        path = preset_path(name)
    else:
        path = Path(name)
        if not path.exists() and path.suffix not in (".yaml", ".yml"):
            raise ConfigError(f"unknown preset {name!r}; available: {list(PRESETS)} (or give the path of a YAML file)")
    return _read_yaml(path), path


def load_config(preset: str | os.PathLike = "paper", overrides: Iterable[str] = ()) -> Config:
    """The preset (a name in :data:`PRESETS` or a YAML path) with ``"a.b=value"`` overrides applied.

    Raises :class:`ConfigError` naming the file and the key for unknown keys or bad values.
    """
    overrides = list(overrides)
    data, path = read_preset(preset)
    source = f"{path} with overrides {overrides}" if overrides else str(path)
    return config_from_dict(apply_overrides(data, overrides), source=source)


def save_config(config: Config, path: str | os.PathLike, package_version: str | None = None) -> Path:
    """Write ``config`` as YAML atomically; ``package_version`` goes in as an informational top-level key.

    The file loads back with :func:`load_config`.
    """
    info = {} if package_version is None else {"package_version": package_version}
    text = yaml.safe_dump({**info, **config.to_dict()}, sort_keys=False, default_flow_style=None)
    return atomic_write_bytes(path, text.encode("utf-8"))
