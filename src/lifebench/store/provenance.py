"""Where a result came from: software versions, machine, threads, BLAS, command line, device and git commit.

Everything is gathered when :func:`collect` is called, never at import. Package versions come from the
installed distributions' metadata, so heavy packages (torch, transformers, ...) are never imported here.

Threads, the CPU model, the BLAS libraries and torch's CPU kernel level are recorded because they change
floating point sums: the same code on another machine can move an image that sits on a decision boundary
to the other class, and a published number should say where it ran. torch's settings are read only when
torch is already imported (a run always has imported it by the time it records provenance).
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

__all__ = ["PACKAGES", "collect", "machine_summary"]

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
#: Environment variables that set thread counts or kernel levels, recorded when set.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ATEN_CPU_CAPABILITY",
              "MKL_ENABLE_INSTRUCTIONS", "OPENBLAS_CORETYPE", "CUBLAS_WORKSPACE_CONFIG")


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


def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux x86), else the architecture.

    Not ``platform.processor()``: on Linux it runs ``uname -p`` in a subprocess and says no more."""
    try:
        with cpuinfo.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.machine() or "unknown"


def _threads() -> dict[str, Any]:
    """CPUs present and usable, torch's intra- and inter-op threads, and thread variables set in the environment."""
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        usable = None
    out: dict[str, Any] = {"cpus": os.cpu_count(), "cpus_usable": usable, "torch": None, "torch_interop": None}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"], out["torch_interop"] = torch.get_num_threads(), torch.get_num_interop_threads()
    if env := {k: os.environ[k] for k in THREAD_ENV if k in os.environ}:
        out["env"] = env
    return out


def _torch_settings() -> dict[str, Any] | None:
    """torch's BLAS, CPU kernel level (AVX2, AVX512, ...) and float32 matmul precision; None if not imported.

    The BLAS lines come from ``torch.__config__.show()`` (a string built in C++, no subprocess)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    out: dict[str, Any] = {"blas": None, "lapack": None, "cpu_capability": None,
                           "float32_matmul_precision": torch.get_float32_matmul_precision()}
    try:
        config = torch.__config__.show()
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception as exc:  # an unusual build: record what is there
        logger.debug("torch config unavailable: %s", exc)
        return out
    for part in config.replace("\n", ",").split(","):  # "  - Build settings: BLAS_INFO=mkl, LAPACK_INFO=mkl, ..."
        key, sep, value = part.partition("=")
        key = key.split()[-1] if key.split() else ""
        if sep and key in ("BLAS_INFO", "LAPACK_INFO"):
            out[key.split("_")[0].lower()] = value.strip()
    if mkl := next((ln.strip(" -") for ln in config.splitlines() if "Math Kernel Library" in ln), None):
        out["mkl"] = mkl.split(" for ")[0]
    if torch.cuda.is_initialized():  # never initialise CUDA just to describe it
        out["cudnn"] = torch.backends.cudnn.version()
        out["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    return out


def _blas() -> dict[str, Any]:
    """numpy's BLAS (name and version) and the BLAS and OpenMP libraries loaded in this process.

    threadpoolctl, when installed, lists the BLAS and OpenMP libraries actually loaded, with their thread
    counts and the kernel OpenBLAS picked for this CPU; else numpy's build configuration says which BLAS it
    was built with."""
    out: dict[str, Any] = {"numpy": None, "libraries": None}
    try:
        import numpy

        info = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        out["numpy"] = " ".join(str(info[k]) for k in ("name", "version") if info.get(k))
    except Exception as exc:  # numpy < 1.25 has no mode="dicts"; an odd build may lack the keys
        logger.debug("numpy BLAS configuration unavailable: %s", exc)
    try:
        import threadpoolctl
    except ImportError:
        return out
    try:
        pools = threadpoolctl.threadpool_info()
    except Exception as exc:  # it inspects loaded shared libraries; never let that fail a run
        logger.debug("threadpoolctl failed: %s", exc)
        return out
    out["libraries"] = [
        {"api": p.get("internal_api"), "version": p.get("version"), "threads": p.get("num_threads"),
         "kernel": p.get("architecture"), "file": Path(str(p.get("filepath", ""))).name}
        for p in pools
    ]  # fmt: skip
    return out


def machine_summary(prov: dict[str, Any]) -> str:
    """One line saying where a run happened: CPU, threads, kernels, BLAS and device, from :func:`collect`'s dict.

    Records written before these fields existed say "not recorded" for what they lack."""
    threads = prov.get("threads") or {}
    t = prov.get("torch") or {}
    blas = prov.get("blas") or {}
    parts = [f"{prov.get('cpu') or 'CPU not recorded'} ({threads.get('cpus_usable') or threads.get('cpus') or '?'}"
             " CPUs)"]
    if threads.get("torch") is not None:
        parts.append(f"torch {threads['torch']} threads (interop {threads.get('torch_interop')})")
    else:
        parts.append("torch threads not recorded")
    if t.get("cpu_capability"):
        parts.append(f"torch kernels {t['cpu_capability']}")
    libs = [f"{b['api']} {b.get('version') or ''}{' ' + b['kernel'] if b.get('kernel') else ''}".strip()
            for b in blas.get("libraries") or [] if b.get("api") != "openmp"]
    if t.get("blas"):
        libs.append(f"torch {t['blas']}")
    parts.append("BLAS " + (", ".join(libs) if libs else blas.get("numpy") or "not recorded"))
    if env := threads.get("env"):
        parts.append(" ".join(f"{k}={v}" for k, v in env.items()))
    parts.append(f"device {prov.get('device') or 'not recorded'}")
    return "; ".join(parts)


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
        ``cpu`` (model name), ``threads`` (CPUs, torch intra/inter-op threads, thread variables set),
        ``torch`` (BLAS, CPU kernel level, float32 matmul precision; None when torch is not imported),
        ``blas`` (numpy's BLAS and the loaded BLAS/OpenMP libraries), ``argv``, ``device``,
        ``git_commit`` and ``git_dirty`` (None unless the lifebench source is a git checkout).
    """
    packages = {name: v for name in PACKAGES if (v := _version(name)) is not None}
    git = _git_info(_package_dir())
    return {
        "lifebench": _version("lifebench"),
        "python": platform.python_version(),
        "packages": packages,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "threads": _threads(),
        "torch": _torch_settings(),
        "blas": _blas(),
        "argv": list(sys.argv),
        "device": device,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
    }
