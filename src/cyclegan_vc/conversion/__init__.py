"""Conversion of new recordings with a trained model: converter, chunking, batches of files, worker processes.

- :mod:`.converter`: :class:`VoiceConverter` (waveform -> WORLD -> generator -> waveform; files
  streamed), :func:`load_converter`, :func:`smooth_frames`;
- :mod:`.chunking`: where long inputs are cut (:func:`plan_chunks`) and how the chunks are joined;
- :mod:`.batch`: :func:`convert` (``cyclegan-vc convert``) and its :class:`ConversionReport`;
- :mod:`.workers`: the worker processes of a batch (:func:`load_in_worker`).

How the output is made (c0, smoothing, F0 range and estimator) is one
:class:`~cyclegan_vc.options.ConversionOptions`.
"""

from ..options import ENERGY_MODES, F0_RANGES, ConversionOptions
from .batch import ConversionReport, convert
from .chunking import Chunk, plan_chunks
from .converter import FRAME_MULTIPLE, VoiceConverter, load_converter, smooth_frames
from .workers import load_in_worker

__all__ = [
    "ENERGY_MODES",
    "F0_RANGES",
    "FRAME_MULTIPLE",
    "Chunk",
    "ConversionOptions",
    "ConversionReport",
    "VoiceConverter",
    "convert",
    "load_converter",
    "load_in_worker",
    "plan_chunks",
    "smooth_frames",
]
