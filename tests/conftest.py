"""Shared fixtures: generated image folders and a tiny deterministic backbone."""

from __future__ import annotations

import atexit
import http.server
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lifebench.backbones.base import Backbone, Preprocess

# Keep test runs off the user's real cache, data and store. Embeddings go to a fresh folder per test session, so
# no test ever reads vectors computed by an older version of the code; downloaded data (the demo photos) is kept
# between sessions on one machine.
os.environ["LIFEBENCH_CACHE"] = tempfile.mkdtemp(prefix="lifebench-test-cache-")
atexit.register(shutil.rmtree, os.environ["LIFEBENCH_CACHE"], ignore_errors=True)
os.environ["LIFEBENCH_DATA"] = str(Path(tempfile.gettempdir()) / "lifebench-test-data")
os.environ.pop("LIFEBENCH_STORE", None)
# Tiny matrices: one thread avoids oversubscribing a 2-core machine (which made small fits 100x slower).
torch.set_num_threads(1)


def write_image(path: Path, rng: np.random.Generator, size=(40, 32), colour=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    if colour is not None:
        arr = (arr * 0.3 + np.asarray(colour) * 0.7).astype(np.uint8)
    Image.fromarray(arr, "RGB").save(path)
    return path


COLOURS = {"ant": (200, 30, 30), "bee": (30, 200, 30), "cod": (30, 30, 200)}


def make_folder(root: Path, per_class: int = 6, layout: str = "flat", seed: int = 0) -> Path:
    """Image folder with 3 colour-coded classes; layout "flat" (<class>/x.png) or "split" (train/ and test/)."""
    rng = np.random.default_rng(seed)
    for cls, colour in COLOURS.items():
        for i in range(per_class):
            if layout == "flat":
                p = root / cls / f"{cls}{i}.png"
            else:
                p = root / ("test" if i % 3 == 0 else "train") / cls / f"{cls}{i}.png"
            write_image(p, rng, colour=colour)
    return root


@pytest.fixture
def fresh_logging(monkeypatch):
    """Drop the stderr handler an earlier in-process CLI call installed (its captured stream is closed by now), so
    log records reach pytest's capture; modules that call ``main()`` many times use it for every test."""
    logger = logging.getLogger("lifebench")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "data")


class TinyBackbone(Backbone):
    """Mean colour + a fixed random projection of 8x8 pixels: fast, deterministic, colour-sensitive."""

    family = "test"
    pooling = "flatten"

    def __init__(self, seed: int = 0, crop: int = 8) -> None:
        g = torch.Generator().manual_seed(seed)
        self.module = torch.nn.Linear(3 * crop * crop, 16, bias=False).eval()
        with torch.no_grad():
            self.module.weight.copy_(torch.randn(16, 3 * crop * crop, generator=g) * 0.05)
        self.id = f"test:tiny@{seed}"
        self.embed_dim = 19
        self.preprocess = Preprocess(crop=crop, resize=crop, interpolation="bilinear")
        self.calls = 0

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls += len(pixels)
        mean = pixels.mean(dim=(2, 3))
        return torch.cat([mean, self.module(pixels.flatten(1))], dim=1)


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    return TinyBackbone()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_after: dict[str, int] = {}  # serve only this many bytes of a file once, then close
    honour_range = True
    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        data = self.files.get(self.path)
        rng = self.headers.get("Range")
        type(self).requests.append((self.path, rng))
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cut = self.cut_after.pop(self.path, None)
        body = data[start:] if cut is None else data[start:cut]
        self.wfile.write(body)


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 serving ``files``; supports Range, can cut a response short once."""
    _Handler.files, _Handler.cut_after, _Handler.requests, _Handler.honour_range = {}, {}, [], True
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory: pytest.TempPathFactory):
    """open_clip with a registered tiny CLIP architecture, ``lbtest-tiny-clip`` (random weights load in ms)."""
    oc = pytest.importorskip("open_clip")
    cfg_path = tmp_path_factory.mktemp("oc_cfg") / "lbtest-tiny-clip.json"
    cfg_path.write_text(json.dumps(TINY_CLIP))
    oc.add_model_config(cfg_path)
    return oc


@pytest.fixture
def serve_task(http_server, monkeypatch):
    """``serve_task(name) -> (mirror spec, files, handler)``: the task's fixture files on the local HTTP server and
    the catalog pointing `lifebench download` at them (:meth:`TaskSpec.mirrored`: pinned checksums become the
    served files', so every download is still verified)."""
    from lifebench.tasks import catalog

    url, handler = http_server

    def serve(name: str, **fixture_options):
        spec = catalog.get_info(name)
        base = f"{url}/{name}"
        files = spec.mirrored(base).fixture(spec.mirrored(base), **fixture_options)
        for path, data in files.items():
            handler.files[f"/{name}/{path}"] = data
        mirror = spec.mirrored(base, files)
        monkeypatch.setitem(catalog._SPECS, name, mirror)
        return mirror, files, handler

    return serve


def chromium() -> str | None:
    """The headless browser the page tests drive (.ci/run installs it); None where it is missing."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    exe = chromium()
    assert exe is not None
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", "--no-first-run",
         "--disable-dev-shm-usage", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )
