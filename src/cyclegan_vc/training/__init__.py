"""Training CycleGAN-VC: data and crops, the :class:`Trainer`, the iteration, validation and the ``train`` stage.

- :mod:`.data`: :class:`TrainingData` (prepared utterances in memory), :class:`CropSampler`,
  :class:`MaskSampler` (filling in frames), the RNG state of the training state;
- :mod:`.trainer`: :class:`Trainer` (networks and Adam optimisers keyed by role, the learning-rate
  schedule :func:`lr_factor`, the weight averages, save / load / export);
- :mod:`.steps`: one iteration, fast (:meth:`Trainer.train_step`) and plain (:func:`reference_train_step`);
- :mod:`.validation`: held-out utterances converted by the conversion code and scored by MCD;
- :mod:`.loop`: :func:`train` (``cyclegan-vc train``): the run directory, the loop, stopping and saving.
"""

from ..devices import cpu_has_native_bf16
from .data import CropSampler, EvalUtterance, MaskSampler, TrainingData
from .loop import STATE_LATEST, NonFiniteLoss, TrainingStopped, TrainSummary, train
from .steps import _use_fused_adam, reference_train_step  # noqa: F401  (_use_fused_adam: benchmarks/train_step.py)
from .trainer import ROLES, SECOND_STEP_DISCRIMINATORS, Trainer, lr_factor

__all__ = [
    "ROLES",
    "SECOND_STEP_DISCRIMINATORS",
    "STATE_LATEST",
    "CropSampler",
    "EvalUtterance",
    "MaskSampler",
    "NonFiniteLoss",
    "TrainSummary",
    "Trainer",
    "TrainingData",
    "TrainingStopped",
    "cpu_has_native_bf16",
    "lr_factor",
    "reference_train_step",
    "train",
]
