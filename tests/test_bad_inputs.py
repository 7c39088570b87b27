"""The bad-input corpus (issue 15): every command against its bad inputs.

Each case must end with exit code 2, exactly one non-empty line on stderr, no traceback anywhere, and the
working folder (and the shared fixture folder) unchanged: the same names, sizes and modification times, nothing
ignored. Most cases run in-process through ``lifebench.cli.main`` (fast); a few run as a real process, to prove the
exit code, and the disk-full cases run as a process under a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored, so a
write past the limit fails with EFBIG as on a full disk). ``pytest -s`` prints the corpus summary.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import make_folder
from lifebench.cli import main

Setup = Callable[[Path, Path], list]  # (working folder, shared fixture folder) -> argv
CASES: list[tuple[str, str, Setup]] = []  # (case id, owner of the code under test, setup)
RESULTS: dict[str, str] = {}  # case id -> "ok" or what went wrong (for the summary)


def case(cid: str, owner: str = "cli") -> Callable[[Setup], Setup]:
    def add(setup: Setup) -> Setup:
        CASES.append((cid, owner, setup))
        return setup

    return add


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``roots``: files and links with their size and modification time in ns, folders by name
    (a folder's own time changes when sqlite makes and removes its -wal/-shm files beside a store it only read)."""
    seen = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                seen[p] = (0, 0) if os.path.isdir(p) and not os.path.islink(p) else (st.st_size, st.st_mtime_ns)
    return seen


# ---------------------------------------------------------------------------------------------- shared fixture

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A real store (pixels on 3 classes x 6 images), its data and a predictions export: read, never written."""
    root = tmp_path_factory.mktemp("bad-inputs-base")
    data = make_folder(root / "data", per_class=6)
    args = ["-q", "run", "--model", "pixels", "--task", str(data), "--store", str(root / "store.sqlite"),
            "--workers", "0", "--no-report"]
    assert main(args) == 0
    assert main(["-q", "export", "--store", str(root / "store.sqlite"), "--out", str(root / "pred.json")]) == 0
    return root


def store(w: Path, b: Path, name: str = "s.sqlite") -> Path:
    shutil.copy2(b / "store.sqlite", w / name)
    return w / name


def text_file(w: Path, name: str, content: str | bytes = "hello\n") -> Path:
    p = w / name
    p.parent.mkdir(parents=True, exist_ok=True)
    (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    return p


def garbage_sqlite(w: Path, name: str = "g.sqlite") -> Path:
    return text_file(w, name, b"SQLite format 3\x00" + bytes(range(256)) * 20)


def truncated_sqlite(w: Path, b: Path, name: str = "t.sqlite") -> Path:
    data = (b / "store.sqlite").read_bytes()
    return text_file(w, name, data[: len(data) // 3])


# ---------------------------------------------------------------------------------------------- numeric options

RUN = ["run", "--model", "pixels", "--task", "data"]
NUMERIC = {  # command prefix -> numeric options -> bad values
    "run": (RUN, {"--resamples": ["999", str(10**12), "many"], "--bootstrap-seed": ["-1", str(2**70)],
                  "--seed": ["-1", str(2**70), "1.5"], "--n-train": ["1", str(10**12)],
                  "--test-size": ["0", "1", "nan"], "--folds": ["1", str(10**9)], "--split-seed": [str(2**32)],
                  "--batch-size": ["0", str(10**9)], "--workers": ["-1", str(10**6)]}),
    "demo": (["demo"], {"--resamples": [str(10**12)], "--bootstrap-seed": [str(2**70)], "--batch-size": ["0"],
                        "--workers": ["-3"]}),
    "embed": (["embed", "--task", "data", "--model", "pixels", "--out", "e.npy"],
              {"--test-size": ["1.5", "inf"], "--folds": ["0"], "--split-seed": ["-1"], "--batch-size": ["x"],
               "--workers": [str(2**40)]}),
    "report": (["report"], {"--resamples": [str(10**12), "1e3"], "--bootstrap-seed": [str(2**70)],
                            "--seed": [str(2**70)], "--confidence": ["0", "1", "95", "nan"], "--per-class": ["0"],
                            "--power": ["0", "1.2", "-inf"], "--limit": ["0", "-2"]}),
    "microscopy-report": (["microscopy-report"], {"--resamples": [str(10**12)], "--seed": ["-1"],
                                                  "--bootstrap-seed": [str(2**64)]}),
    "interpolate": (["interpolate", "timm:resnet18@random", "timm:resnet18@random:1"],
                    {"--resamples": [str(10**12)], "--bootstrap-seed": ["-1"], "--test-size": ["0"],
                     "--folds": ["-5"], "--split-seed": ["9" * 30], "--batch-size": ["-1"], "--workers": ["x"]}),
    "taxonomy": (["taxonomy", "--task", "data"], {"--resamples": [str(10**12)], "--seed": [str(2**70)],
                                                  "--bootstrap-seed": ["-7"], "--confidence": ["1"],
                                                  "--test-size": ["-0.5"], "--folds": ["1"], "--split-seed": ["-1"],
                                                  "--batch-size": ["0"], "--workers": ["-1"]}),
    "analyze": (["analyze"], {"--resamples": [str(10**12)], "--seed": ["-1"], "--bootstrap-seed": [str(2**70)],
                              "--confidence": ["2"], "--min-models": ["1", str(10**12), "ten"]}),
    "export": (["export", "--out", "p.csv"], {"--resamples": ["10"], "--seed": [str(2**70)],
                                              "--bootstrap-seed": ["-1"], "--confidence": ["0"]}),
    "sweep": (["sweep", "sweep.toml"], {"--processes": ["0", str(10**6), "gpu"]}),
    "finetune": (["finetune", "timm:resnet18@random", "--task", "data", "--out", "m.safetensors"],
                 {"--steps": [str(10**12)], "--epochs": [str(10**9)], "--label-smoothing": ["2", "nan"],
                  "--seed": [str(2**70)], "--checkpoint-every": ["0"], "--batch-size": ["1"], "--warmup-steps": ["-1"],
                  "--workers": [str(10**6)]}),
    "forgetting": (["forgetting", "a", "b", "--target", "data"], {"--budget": ["-1", "nan", "5"],
                                                                  "--resamples": [str(10**12)]}),
}
for _cmd, (_prefix, _options) in NUMERIC.items():
    for _option, _values in _options.items():
        for _value in _values:
            case(f"{_cmd} {_option} {_value[:24]}")(lambda w, b, p=_prefix, o=_option, v=_value: [*p, o, v])

case("run --shots 0")(lambda w, b: [*RUN, "--shots", "0"])
case("run --shots 10**12")(lambda w, b: [*RUN, "--shots", str(10**12)])
case("run --shots x")(lambda w, b: [*RUN, "--shots", "1,x"])
case("interpolate --alphas 0:1:1e-12")(lambda w, b: ["interpolate", "a", "b", "--alphas", "0:1:1e-12", "--task", "d"])
case("interpolate --alphas 0:inf:0.1")(lambda w, b: ["interpolate", "a", "b", "--alphas", "0:inf:0.1", "--task", "d"])
case("interpolate --alphas nan")(lambda w, b: ["interpolate", "a", "b", "--alphas", "nan", "--task", "d"])
case("interpolate --alphas 1:0:0.1")(lambda w, b: ["interpolate", "a", "b", "--alphas", "1:0:0.1", "--task", "d"])
case("interpolate --alphas empty")(lambda w, b: ["interpolate", "a", "b", "--alphas", ",", "--task", "d"])
case("run --param not key=value")(lambda w, b: [*RUN, "--param", "C"])
case("run --param random_state")(lambda w, b: [*RUN, "--param", "random_state=1"])


# ---------------------------------------------------------------------------------------------- every command

case("no such command")(lambda w, b: ["frobnicate"])
case("unknown global option")(lambda w, b: ["--colour", "ls", "tasks"])
case("ls unknown what")(lambda w, b: ["ls", "datasets"])
case("completion zsh")(lambda w, b: ["completion", "zsh"])
case("completion no shell")(lambda w, b: ["completion"])

# run
case("run no model")(lambda w, b: ["run", "--task", str(b / "data")])
case("run missing task path")(lambda w, b: [*RUN[:4], str(w / "nope")])
case("run task is a text file")(lambda w, b: [*RUN[:4], str(text_file(w, "notes.txt"))])
case("run task manifest garbage")(lambda w, b: [*RUN[:4], str(text_file(w, "m.csv", b"\xff\xfe\x00garbage"))])
case("run unknown task name")(lambda w, b: [*RUN[:4], "beluga-whales"])
case("run unknown suite")(lambda w, b: ["run", "--model", "pixels", "--suite", "ecolgy"])
case("run no task")(lambda w, b: ["run", "--model", "pixels"])
case("run unknown model")(lambda w, b: ["run", "--model", "resnet-9000", "--task", str(b / "data")])
case("run unknown protocol")(lambda w, b: [*RUN[:4], str(b / "data"), "--protocol", "svm-ish"])
case("run unknown protocol param")(lambda w, b: [*RUN[:4], str(b / "data"), "--protocol", "logreg",
                                                 "--param", "gamma=3"])
case("run text-type without zero-shot")(lambda w, b: [*RUN[:4], str(b / "data"), "--text-type", "sci"])
case("run templates missing")(lambda w, b: [*RUN[:4], str(b / "data"), "--protocol", "zero-shot",
                                            "--templates", str(w / "none.txt")])
case("run test-size and folds")(lambda w, b: [*RUN[:4], str(b / "data"), "--test-size", "0.3", "--folds", "3"])
case("run store is a folder")(lambda w, b: [*RUN[:4], str(b / "data"), "--store", str(w)])
case("run store is a text file")(lambda w, b: [*RUN[:4], str(b / "data"), "--store", str(text_file(w, "s.sqlite"))])
case("run store is garbage sqlite")(lambda w, b: [*RUN[:4], str(b / "data"), "--store", str(garbage_sqlite(w))])
case("run store truncated", "store")(lambda w, b: [*RUN[:4], str(b / "data"), "--store",
                                                   str(truncated_sqlite(w, b))])
case("run store under a file")(lambda w, b: [*RUN[:4], str(b / "data"), "--store",
                                             str(text_file(w, "f") / "r.sqlite")])
case("run out under a file")(lambda w, b: [*RUN[:4], str(b / "data"), "--store", str(store(w, b)), "--out",
                                           str(text_file(w, "f") / "o")])
case("run config missing")(lambda w, b: [*RUN, "--config", str(w / "none.toml")])
case("run config not TOML", "config")(lambda w, b: [*RUN, "--config", str(text_file(w, "c.toml", "models = [\n"))])
case("run config not UTF-8", "config")(lambda w, b: [*RUN, "--config", str(text_file(w, "c.toml", b"seeds = [\xff]\n"))])
case("run config wrong type", "config")(lambda w, b: [*RUN, "--config",
                                                      str(text_file(w, "c.toml", 'seeds = "zero"\n'))])
case("run device tpu")(lambda w, b: [*RUN[:4], str(b / "data"), "--device", "tpu"])
case("run decode bad choice")(lambda w, b: [*RUN, "--decode", "fast"])
case("run task path with a newline")(lambda w, b: [*RUN[:4], str(w / "a\nb")])  # the error stays one line
case("report store path with an escape sequence")(lambda w, b: ["report", "--store", str(w / "a\x1b[31mb")])
case("export out with NUL")(lambda w, b: ["export", "--store", str(store(w, b)), "--out", f"{w}/a\0b.csv"])
case("demo out with NUL")(lambda w, b: ["demo", "--synthetic", "--out", f"{w}/a\0b"])


@case("run store is a symlink loop")  # refused, and the user's links are kept
def _(w, b):
    os.symlink(w / "s2.sqlite", w / "s.sqlite")
    os.symlink(w / "s.sqlite", w / "s2.sqlite")
    return [*RUN[:4], str(b / "data"), "--store", str(w / "s.sqlite")]


@case("run decompression bomb", "images")
def _(w, b):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    d = make_folder(w / "d", per_class=3)  # a 50000 x 50000 PNG header (2.5 gigapixels) over a few bytes
    (d / "ant" / "ant0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 1, 0, 0, 0, 0))
                                     + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b""))
    return [*RUN[:4], str(d), "--store", str(w / "r.sqlite"), "--workers", "0", "--no-cache"]


@case("run class folder not UTF-8", "tasks")
def _(w, b):
    d = make_folder(w / "d", per_class=3)
    os.rename(d / "ant", os.fsencode(d) + b"/\xffant")
    return [*RUN[:4], str(d), "--store", str(w / "r.sqlite")]


@case("run manifest 128 kB field", "tasks")
def _(w, b):
    return [*RUN[:4], str(text_file(w, "m.csv", "path,label\n" + "a" * 200_000 + ",x\nb.png,y\n")),
            "--store", str(w / "r.sqlite")]


@case("run corrupt safetensors", "backbones")
def _(w, b):
    ckpt = text_file(w, "bad.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + bytes(64))
    return ["run", "--model", f"timm:resnet18@{ckpt}", "--task", str(b / "data"), "--store", str(w / "r.sqlite")]


@case("run refused pickle", "backbones")
def _(w, b):
    import argparse

    import torch

    torch.save({"state": argparse.Namespace(x=1)}, w / "evil.pt")
    return ["run", "--model", f"timm:resnet18@{w / 'evil.pt'}", "--task", str(b / "data"),
            "--store", str(w / "r.sqlite")]


# sweep and status
def sweep_file(w: Path, b: Path, extra: str | bytes = "", store_line: str = 'store = "out/r.sqlite"') -> Path:
    head = f'models = ["pixels"]\ntasks = ["{b / "data"}"]\n{store_line}\n'
    body = head.encode() + extra if isinstance(extra, bytes) else (head + extra).encode()
    return text_file(w, "sweep.toml", body)


case("sweep missing file")(lambda w, b: ["sweep", str(w / "none.toml")])
case("sweep file is a folder")(lambda w, b: ["sweep", str(w)])
case("sweep not TOML", "config")(lambda w, b: ["sweep", str(text_file(w, "s.toml", "models = [\n"))])
case("sweep not UTF-8", "config")(lambda w, b: ["sweep", str(sweep_file(w, b, b"# \xff\xfe\n"))])
case("sweep executor = 5", "config")(lambda w, b: ["sweep", str(sweep_file(w, b, "executor = 5\n"))])
case("sweep processes = [2]", "config")(lambda w, b: ["sweep", str(sweep_file(
    w, b, '[executor]\nkind = "local"\nprocesses = [2]\n'))])
case("sweep executor.slurm = 5", "config")(lambda w, b: ["sweep", str(sweep_file(w, b, "[executor]\nslurm = 5\n"))])
case("sweep store list", "config")(lambda w, b: ["sweep", str(sweep_file(w, b, store_line='store = ["r.sqlite"]'))])
case("sweep unknown key", "config")(lambda w, b: ["sweep", str(sweep_file(w, b, "modles = [1]\n"))])
case("sweep models not a list", "config")(lambda w, b: ["sweep", str(text_file(
    w, "sweep.toml", f'models = 3\ntasks = ["{b / "data"}"]\n'))])
case("sweep executor bad choice")(lambda w, b: ["sweep", str(sweep_file(w, b)), "--executor", "k8s"])
case("status missing file")(lambda w, b: ["status", str(w / "none.toml")])
case("status not UTF-8", "config")(lambda w, b: ["status", str(sweep_file(w, b, b"x = '\xff'\n"))])
case("status not TOML", "config")(lambda w, b: ["status", str(text_file(w, "s.toml", "[[[\n"))])
case("status store is garbage")(lambda w, b: ["status", str(sweep_file(
    w, b, store_line=f'store = "{garbage_sqlite(w)}"'))])

# demo
case("demo out is a file")(lambda w, b: ["demo", "--synthetic", "--out", str(text_file(w, "demo"))])
case("demo out under a file")(lambda w, b: ["demo", "--synthetic", "--out", str(text_file(w, "f") / "demo")])

# embed
case("embed out suffix")(lambda w, b: ["embed", "--task", str(b / "data"), "--model", "pixels", "--out",
                                       str(w / "e.txt")])
case("embed out under a file")(lambda w, b: ["embed", "--task", str(b / "data"), "--model", "pixels", "--out",
                                             str(text_file(w, "f") / "e.npy")])
case("embed missing task")(lambda w, b: ["embed", "--task", str(w / "none"), "--model", "pixels", "--out",
                                         str(w / "e.npy")])
case("embed unknown model")(lambda w, b: ["embed", "--task", str(b / "data"), "--model", "pixel", "--out",
                                          str(w / "e.npy")])
case("embed no out")(lambda w, b: ["embed", "--task", str(b / "data"), "--model", "pixels"])

# download
case("download unknown task")(lambda w, b: ["download", "belugas"])
case("download dir is a file")(lambda w, b: ["download", "beluga", "--dir", str(text_file(w, "root"))])
case("download no task")(lambda w, b: ["download"])

# report
case("report store missing")(lambda w, b: ["report", "--store", str(w / "none.sqlite")])
case("report store is a folder")(lambda w, b: ["report", "--store", str(w)])
case("report store is a text file")(lambda w, b: ["report", "--store", str(text_file(w, "s.sqlite"))])
case("report store garbage sqlite")(lambda w, b: ["report", "--store", str(garbage_sqlite(w))])
case("report store truncated", "store")(lambda w, b: ["report", "--store", str(truncated_sqlite(w, b))])
case("report store empty file")(lambda w, b: ["report", "--store", str(text_file(w, "e.sqlite", b""))])
case("report unknown task")(lambda w, b: ["report", "--store", str(store(w, b)), "--task", "nope"])
case("report unknown metric")(lambda w, b: ["report", "--store", str(store(w, b)), "--metric", "acuracy"])
case("report out is a file")(lambda w, b: ["report", "--store", str(store(w, b)), "--out", str(text_file(w, "o"))])
case("report html is a file")(lambda w, b: ["report", "--store", str(store(w, b)), "--out", str(w),
                                            "--html", str(text_file(w, "h"))])
case("report compare unknown")(lambda w, b: ["report", "--store", str(store(w, b)), "--out", str(w),
                                             "--compare", "x", "y"])
case("report format bad")(lambda w, b: ["report", "--format", "xml"])
case("report default store missing")(lambda w, b: ["report"])
case("report export text as store")(lambda w, b: ["report", "--store", str(text_file(w, "p.json", "{not json"))])

# merge
case("merge source missing")(lambda w, b: ["merge", str(w / "into.sqlite"), str(w / "none.sqlite")])
case("merge source text file")(lambda w, b: ["merge", str(w / "into.sqlite"), str(text_file(w, "s.sqlite"))])
case("merge source garbage")(lambda w, b: ["merge", str(w / "into.sqlite"), str(garbage_sqlite(w))])
case("merge source is a folder")(lambda w, b: ["merge", str(w / "into.sqlite"), str(w)])
case("merge into is a folder")(lambda w, b: ["merge", str(w), str(store(w, b))])
case("merge into is a text file")(lambda w, b: ["merge", str(text_file(w, "i.sqlite")), str(store(w, b))])
case("merge no sources")(lambda w, b: ["merge", str(w / "into.sqlite")])
case("merge store into itself")(lambda w, b: ["merge", str(store(w, b)), str(w / "." / "s.sqlite")])

# microscopy-report
case("microscopy-report store missing")(lambda w, b: ["microscopy-report", "--store", str(w / "none.sqlite")])
case("microscopy-report store text")(lambda w, b: ["microscopy-report", "--store", str(text_file(w, "s.sqlite"))])
case("microscopy-report no ubench results")(lambda w, b: ["microscopy-report", "--store", str(store(w, b)),
                                                          "--out", str(w)])

# interpolate: refused inputs leave no store behind (the default store is in the working folder)
case("interpolate no task")(lambda w, b: ["interpolate", "timm:resnet18@random", "timm:resnet18@random:1"])
case("interpolate unknown suite")(lambda w, b: ["interpolate", "timm:resnet18@random", "timm:resnet18@random:1",
                                                "--suite", "ecolgy"])
case("interpolate not a checkpoint id")(lambda w, b: ["interpolate", "pixels", "random-vit", "--task",
                                                      str(b / "data")])
case("interpolate different architectures")(lambda w, b: [
    "interpolate", "timm:resnet18@random", "timm:resnet34@random", "--task", str(b / "data")])
case("interpolate no cache")(lambda w, b: ["interpolate", "timm:resnet18@random", "timm:resnet18@random:1",
                                           "--task", str(b / "data"), "--no-cache"])
case("interpolate missing task")(lambda w, b: ["interpolate", "timm:resnet18@random", "timm:resnet18@random:1",
                                               "--task", str(w / "none")])
case("interpolate store is text")(lambda w, b: ["interpolate", "timm:resnet18@random", "timm:resnet18@random:1",
                                                "--task", str(b / "data"), "--store", str(text_file(w, "s.sqlite"))])

# taxonomy
case("taxonomy store missing")(lambda w, b: ["taxonomy", "--task", "x", "--store", str(w / "none.sqlite")])
case("taxonomy store text")(lambda w, b: ["taxonomy", "--task", "x", "--store", str(text_file(w, "s.sqlite"))])
case("taxonomy unknown task")(lambda w, b: ["taxonomy", "--task", "nope", "--store", str(store(w, b))])
case("taxonomy no taxonomy")(lambda w, b: ["taxonomy", "--task", "data", "--store", str(store(w, b)),
                                           "--out", str(w)])
case("taxonomy bad rank")(lambda w, b: ["taxonomy", "--task", "data", "--rank", "tribe"])
case("taxonomy bad method")(lambda w, b: ["taxonomy", "--task", "data", "--method", "pca"])

# analyze
case("analyze results missing")(lambda w, b: ["analyze", "--results", str(w / "none.json")])
case("analyze results garbage json", "results")(lambda w, b: ["analyze", "--results",
                                                             str(text_file(w, "r.json", "{nope"))])
case("analyze results not UTF-8", "results")(lambda w, b: ["analyze", "--results",
                                                          str(text_file(w, "r.json", b'{"x": "\xff"}'))])
case("analyze results wrong shape", "results")(lambda w, b: ["analyze", "--results",
                                                            str(text_file(w, "r.json", "[1, 2, 3]"))])
case("analyze results empty csv", "results")(lambda w, b: ["analyze", "--results", str(text_file(w, "r.csv", ""))])
case("analyze results folder empty", "results")(lambda w, b: ["analyze", "--results", str(w)])
case("analyze store and results")(lambda w, b: ["analyze", "--store", "a", "--results", "b"])
case("analyze store text")(lambda w, b: ["analyze", "--store", str(text_file(w, "s.sqlite")), "--out", str(w)])
case("analyze too few models")(lambda w, b: ["analyze", "--store", str(store(w, b)), "--out", str(w / "o")])
case("analyze clip metric bad")(lambda w, b: ["analyze", "--clip-metric", "acc10"])


@case("analyze absurd release_ms", "results")
def _(w, b):
    models = [{"ckpt": f"m{i}", "display": f"M{i}", "release_ms": 1e30 if i == 0 else None} for i in range(4)]
    results = [{"task": t, "model": f"m{i}", "mean": 0.5 + 0.01 * i, "ci_low": None, "ci_high": None}
               for i in range(4) for t in ("imagenet1k", "beluga", "plantnet")]
    doc = {"meta": {"schema": 1}, "models": models, "results": results,
           "benchmark_tasks": [{"name": "beluga"}, {"name": "plantnet"}],
           "prior_work_tasks": [{"name": "imagenet1k"}]}
    return ["analyze", "--results", str(text_file(w, "results.json", json.dumps(doc))), "--out", str(w / "a")]


# export
case("export out suffix")(lambda w, b: ["export", "--store", str(store(w, b)), "--out", str(w / "p.txt")])
case("export store missing")(lambda w, b: ["export", "--store", str(w / "none.sqlite"), "--out", str(w / "p.csv")])
case("export store text")(lambda w, b: ["export", "--store", str(text_file(w, "s.sqlite")), "--out",
                                        str(w / "p.csv")])
case("export store garbage")(lambda w, b: ["export", "--store", str(garbage_sqlite(w)), "--out", str(w / "p.csv")])
case("export out under a file")(lambda w, b: ["export", "--store", str(store(w, b)), "--out",
                                              str(text_file(w, "f") / "p.csv")])
case("export out is a folder")(lambda w, b: ["export", "--store", str(store(w, b)), "--out", str(w)])
case("export what bad")(lambda w, b: ["export", "--out", "p.csv", "--what", "cells"])
case("export unknown task")(lambda w, b: ["export", "--store", str(store(w, b)), "--out", str(w / "p.csv"),
                                          "--task", "nope"])
case("export no out")(lambda w, b: ["export"])


# ---------------------------------------------------------------------------------------------- the test

def _check(cid: str, code: object, out: str, err: str, before: dict, after: dict) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    problems = []
    if code != 2:
        problems.append(f"exit {code}")
    if "Traceback" in out + err:
        problems.append("traceback")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines")
    if before != after:
        added = sorted(set(after) - set(before))
        changed = sorted(k for k in before if after.get(k) != before[k])
        problems.append(f"leftovers {[Path(p).name for p in added + changed][:5]}")
    RESULTS[cid] = "; ".join(problems) or "ok"
    return RESULTS[cid] + f" | {(lines or [''])[0][:300]}"


@pytest.mark.parametrize("cid, owner, setup", CASES, ids=[c[0] for c in CASES])
def test_bad_input(cid, owner, setup, base, tmp_path, monkeypatch, capsys):
    w = tmp_path / "w"
    w.mkdir()
    monkeypatch.chdir(w)
    monkeypatch.setenv("LIFEBENCH_DATA", str(w / "dataroot"))
    monkeypatch.delenv("LIFEBENCH_STORE", raising=False)
    argv = [str(a) for a in setup(w, base)]
    capsys.readouterr()
    before = snapshot(tmp_path, base)
    escaped = ""
    try:
        code = main(["-q", *argv])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    except Exception:  # a bug: what the user would see is a traceback
        code, escaped = "an exception", traceback.format_exc()
    out, err = capsys.readouterr()
    err += escaped
    verdict = _check(cid, code, out, err, before, snapshot(tmp_path, base))
    assert verdict.startswith("ok"), (owner, verdict)


# ---------------------------------------------------------------------------------------------- full disk, in-process

FULL = {  # case -> (setup, the file whose write meets a full disk: ENOSPC from fsync, as with delayed allocation)
    "disk full: report leaderboard.md": (lambda w, b: ["report", "--store", store(w, b), "--out", w],
                                         "leaderboard.md"),
    "disk full: report csv format leaderboard.md": (
        lambda w, b: ["report", "--store", store(w, b), "--out", w, "--format", "csv"], "leaderboard.md"),
    "disk full: export predictions csv": (lambda w, b: ["export", "--store", store(w, b), "--out", w / "p.csv"],
                                          "p.csv"),
    "disk full: export predictions csv sidecar": (
        lambda w, b: ["export", "--store", store(w, b), "--out", w / "p.csv"], "p.experiments.json"),
    "disk full: export predictions parquet": (
        lambda w, b: ["export", "--store", store(w, b), "--out", w / "p.parquet"], "p.parquet"),
    "disk full: export leaderboard json": (
        lambda w, b: ["export", "--store", store(w, b), "--out", w / "l.json", "--what", "leaderboard"], ".json"),
    "disk full: embed npy": (lambda w, b: ["embed", "--task", b / "data", "--model", "pixels", "--out", w / "e.npy",
                                           "--workers", "0"], "e.npy"),
    "disk full: embed ids.csv sidecar": (
        lambda w, b: ["embed", "--task", b / "data", "--model", "pixels", "--out", w / "e.npy", "--workers", "0"],
        "e.ids.csv"),
    "disk full: embed parquet": (lambda w, b: ["embed", "--task", b / "data", "--model", "pixels", "--out",
                                               w / "e.parquet", "--workers", "0"], "e.parquet"),
}


@pytest.mark.parametrize("cid", list(FULL))
def test_disk_full(cid, base, tmp_path, monkeypatch, capsys):
    setup, victim = FULL[cid]
    w = tmp_path / "w"
    w.mkdir()
    monkeypatch.chdir(w)
    argv = [str(a) for a in setup(w, base)]
    fsync = os.fsync

    def full(fd: int) -> None:
        if victim in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    before = snapshot(tmp_path, base)
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    # the data's own warnings (18 test images) come before the failure: the error itself must be one line
    err = "\n".join(ln for ln in err.splitlines() if not re.match(r"\d\d:\d\d:\d\d WARNING data", ln))
    verdict = _check(cid, code, out, err, before, snapshot(tmp_path, base))
    assert verdict.startswith("ok"), verdict
    assert "disk is full" in err and victim.lstrip(".") in err, err


# ---------------------------------------------------------------------------------------------- real processes

def _process(argv: list[str], cwd: Path, fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "LIFEBENCH_DATA": str(cwd / "dataroot"), "OMP_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("LIFEBENCH_STORE", None)
    return subprocess.run([sys.executable, "-m", "lifebench", "-q", *argv], cwd=cwd, capture_output=True, text=True,
                          env=env, preexec_fn=limit if fsize else None, timeout=120)


PROCESS_CASES = {
    "process: unknown command": (lambda w, b: ["frobnicate"], None),
    "process: --resamples 10**12": (lambda w, b: ["report", "--resamples", str(10**12)], None),
    "process: --seed 2**70": (lambda w, b: [*RUN, "--seed", str(2**70)], None),
    "process: store is a text file": (lambda w, b: ["report", "--store", str(text_file(w, "s.sqlite"))], None),
    # disk full (a file-size limit): above sqlite's 32 kB shared-memory file, below the array written
    "process: disk full, embed npy and sidecar": (
        lambda w, b: ["embed", "--task", str(b / "data"), "--model", "pixels", "--out", str(w / "e.npy"),
                      "--no-cache", "--workers", "0"], 50_000),
    "process: disk full, embed parquet": (
        lambda w, b: ["embed", "--task", str(b / "data"), "--model", "pixels", "--out", str(w / "e.parquet"),
                      "--no-cache", "--workers", "0"], 50_000),
    "process: disk full, run store": (
        lambda w, b: [*RUN[:4], str(b / "data"), "--store", str(w / "r.sqlite"), "--workers", "0", "--no-cache"],
        40_000),
}
PROCESS_OWNERS = {"process: disk full, run store": "store"}


@pytest.mark.parametrize("cid", list(PROCESS_CASES))
def test_bad_input_process(cid, base, tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    setup, fsize = PROCESS_CASES[cid]
    argv = [str(a) for a in setup(w, base)]
    before = snapshot(tmp_path, base)
    res = _process(argv, w, fsize)
    verdict = _check(cid, res.returncode, res.stdout, res.stderr, before, snapshot(tmp_path, base))
    assert verdict.startswith("ok"), (PROCESS_OWNERS.get(cid, "cli"), verdict, res.stderr[-2000:])


HOLD_LOCK = """import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(60)
"""


def test_store_locked_by_another_writer(base, tmp_path, monkeypatch, capsys):
    """Another process holds the store's write lock past the busy timeout (1 s here, 30 s by default): run says so
    in one line (it was SQLite's "database is locked" with a traceback) and writes nothing."""
    import lifebench.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_S", 1.0)
    w = tmp_path / "w"
    w.mkdir()
    data = make_folder(w / "d", per_class=3, seed=5)
    s = store(w, base)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(s)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(tmp_path, base)
        code = main(["-q", *RUN[:4], str(data), "--store", str(s), "--workers", "0", "--no-report"])
        out, err = capsys.readouterr()
        verdict = _check("store locked by another writer", code, out, err, before, snapshot(tmp_path, base))
    finally:
        holder.kill()
        holder.wait()
    assert verdict.startswith("ok"), ("store", verdict)
    assert "stayed locked by another process for 1 s" in err, err


def test_summary(request):
    """Runs last (file order): prints the corpus counts for ``pytest -s``."""
    cases = len(CASES) + len(FULL) + len(PROCESS_CASES) + 1  # + test_store_locked_by_another_writer
    failing = {k: v for k, v in RESULTS.items() if v != "ok"}
    tracebacks = sum("traceback" in v for v in failing.values())
    leftovers = sum("leftovers" in v for v in failing.values())
    one_line = sum("stderr lines" not in v for v in RESULTS.values())
    print(f"\nbad-input corpus: {cases} cases, {len(RESULTS)} run, {len(RESULTS) - len(failing)} pass; "
          f"one-line errors {one_line}, tracebacks {tracebacks}, leftovers {leftovers}")
    for k, v in failing.items():
        print(f"  FAIL {k}: {v}")
    assert cases >= 150


@pytest.mark.parametrize("value", ["abc", "-5", "nan", "0.5", ""])
def test_a_bad_lease_variable_is_one_line_before_anything_runs(value, base, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIFEBENCH_LEASE_S", value)
    before = snapshot(tmp_path, base)
    assert main(["-q", "run", "--model", "pixels", "--task", str(base / "data"), "--store", "r.sqlite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lifebench: error: LIFEBENCH_LEASE_S={value!r} is not a number of seconds >= 1; set it to the "
                   "seconds a claim lives without a heartbeat (default 600) or unset it"]
    assert snapshot(tmp_path, base) == before
