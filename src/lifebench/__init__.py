"""lifebench: choose a vision model for scientific images, with honest uncertainty.

Embed each image once with frozen backbones (open_clip incl. BioCLIP, timm, Hugging Face, local checkpoints,
offline baselines), fit light probes on the features, and compare models with paired bootstrap confidence
intervals. The command line is ``lifebench``; see ``lifebench --help``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
