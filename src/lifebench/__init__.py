"""lifebench: choose a vision model for scientific images, with honest uncertainty.

Embed each image once with frozen backbones (open_clip incl. BioCLIP, timm, Hugging Face, local checkpoints,
offline baselines), fit light probes on the features, and compare models with paired bootstrap confidence
intervals. The command line is ``lifebench``; see ``lifebench --help``. In Python (docs/python.md)::

    import lifebench as lb
    results = lb.evaluate(models=["pixels"], tasks=["my_images/"])
    results.leaderboard

The API (:mod:`lifebench.api`) is imported on first use, so ``import lifebench`` stays light.
"""

__version__ = "0.1.0"
__all__ = ["Results", "__version__", "embed", "evaluate", "load_store", "models", "tasks"]

_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str):
    if name == "tasks":  # the subpackage lifebench.tasks, which is callable: lb.tasks() lists the tasks
        import lifebench.tasks

        return lifebench.tasks
    if name in _API:
        from lifebench import api

        return getattr(api, name)
    raise AttributeError(f"module 'lifebench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
