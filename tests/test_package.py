"""Package hygiene: no network or git at import, no print outside the CLI, a working console script."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import lifebench

SRC = Path(lifebench.__file__).parent

_IMPORT_ALL = """
import socket, subprocess, pkgutil, importlib, sys
def refuse(*a, **k):
    raise RuntimeError(f"network at import: {a[:2]}")
socket.socket.connect = refuse
socket.create_connection = refuse
popen_init = subprocess.Popen.__init__
def no_git(self, args, *a, **k):
    if "git" in str(args):
        raise RuntimeError(f"git at import: {args}")
    return popen_init(self, args, *a, **k)
subprocess.Popen.__init__ = no_git
import lifebench
names = [m.name for m in pkgutil.walk_packages(lifebench.__path__, "lifebench.") if m.name != "lifebench.__main__"]
for name in names:
    importlib.import_module(name)
heavy = sorted(m for m in ("timm", "open_clip", "transformers") if m in sys.modules)
print(len(names), heavy)
"""


def test_importing_every_module_does_no_network_no_git_and_no_heavy_imports():
    res = subprocess.run([sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    count, heavy = res.stdout.strip().split(" ", 1)
    assert int(count) >= 25 and heavy == "[]", res.stdout


def test_only_the_cli_prints():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []


def test_console_script_and_module_entry_point():
    exe = Path(sys.executable).parent / "lifebench"
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"lifebench {lifebench.__version__}"
    res = subprocess.run([sys.executable, "-m", "lifebench", "--version"], capture_output=True, text=True)
    assert res.stdout.strip() == f"lifebench {lifebench.__version__}"


def test_every_module_is_reachable():
    names = {m.name for m in pkgutil.walk_packages(lifebench.__path__, "lifebench.")}
    for sub in ("backbones", "tasks", "protocols", "metrics", "store", "runner", "report"):
        assert f"lifebench.{sub}" in names
