"""Where a result came from: software versions, machine, command line, device and git commit.

Everything is gathered when :func:`collect` is called, never at import. Package versions come from the
installed distributions' metadata, so heavy packages (torch, transformers, ...) are never imported here.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "collect"]

logger = logging.getLogger(__name__)

#: Distributions whose versions are recorded when installed.
PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "scikit-learn",
    "timm",
    "open_clip_torch",
    "transformers",
    "pillow",
)

_GIT_TIMEOUT_S = 5.0


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_dir() -> Path:
    """The folder holding the lifebench package source."""
    return Path(__file__).resolve().parent.parent


def _git(args: list[str], cwd: Path) -> str | None:
    """Stdout of ``git <args>`` run in ``cwd``, or None on any failure (no git, not a checkout, timeout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("git %s in %s failed: %s", " ".join(args), cwd, exc)
        return None
    if done.returncode != 0:
        return None
    return done.stdout


def _git_info(package_dir: Path) -> dict[str, Any]:
    """The commit and dirty flag of the checkout holding ``package_dir``; both None outside a checkout.

    The package's own ``__init__.py`` must be tracked by that checkout, so an installed copy of lifebench
    that merely sits inside some other repository (e.g. a virtualenv in a project) reports no commit.
    """
    none: dict[str, Any] = {"commit": None, "dirty": None}
    if not package_dir.is_dir():
        return none
    head = _git(["rev-parse", "--verify", "HEAD"], package_dir)
    if head is None or _git(["ls-files", "--error-unmatch", "--", "__init__.py"], package_dir) is None:
        return none
    status = _git(["status", "--porcelain", "--untracked-files=no"], package_dir)
    return {"commit": head.strip(), "dirty": None if status is None else bool(status.strip())}


def collect(device: str | None = None) -> dict[str, Any]:
    """Provenance of a run, as a JSON-serialisable dict.

    Parameters
    ----------
    device:
        Name of the device the run used (e.g. ``"NVIDIA H100 80GB HBM3"`` or ``"cpu"``).

    Returns
    -------
    dict
        ``lifebench``, ``python``, ``packages`` (installed ones only), ``platform``, ``hostname``,
        ``argv``, ``device``, ``git_commit`` and ``git_dirty`` (None unless the lifebench source is a
        git checkout).
    """
    packages = {name: v for name in PACKAGES if (v := _version(name)) is not None}
    git = _git_info(_package_dir())
    return {
        "lifebench": _version("lifebench"),
        "python": platform.python_version(),
        "packages": packages,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "argv": list(sys.argv),
        "device": device,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
    }
