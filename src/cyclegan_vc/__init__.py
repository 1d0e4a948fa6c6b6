"""cyclegan-vc: non-parallel voice conversion with CycleGAN-VC (Kaneko & Kameoka, 2018) in PyTorch."""

__version__ = "0.1.0"

__all__ = ["__version__"]
