"""cyclegan-vc: non-parallel voice conversion with CycleGAN-VC (Kaneko & Kameoka, 2018) in PyTorch."""

import warnings

__version__ = "0.1.0"

__all__ = ["__version__"]

# pyworld imports pkg_resources, whose deprecation warning names nothing a user can act on. Filtered here,
# before any module of the package imports pyworld, so that it covers every process: worker processes
# started with "spawn" import this package before they unpickle their first task.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
