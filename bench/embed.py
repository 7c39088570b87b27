"""Embedding throughput from JPEG files on disk, divided by the pure forward-pass throughput of the same model.

Both are measured side by side in one run, with the same batch size, precision, layout and compile setting
(the forward pass is :func:`lifebench.features.make_encoder`, the one ``embed`` uses):

(a) forward: random tensors already on the device at the model's input size, no data loading at all;
(b) embed:   :func:`lifebench.features.embed` on N synthetic 500x375 JPEGs (quality 90: smooth gradients,
             shapes, mild noise), no cache: read, decode, resize, crop, normalise, forward, copy back.

The ratio (b)/(a) is the share of the model's speed that the data path delivers; 1.0 means data loading is
fully hidden behind the forward pass. Examples::

    python bench/embed.py --device cuda --n-images 20000 --models vit_base_patch16_224,vit_large_patch14_224
    python bench/embed.py --device cpu --n-images 256 --models vit_small_patch16_224 --threads 2
    python bench/embed.py --device cpu --compare      # numerical differences between the decode paths
    python bench/embed.py --device cpu --data-only --decode pil-draft --image-size 1600x1200

Weights are random (``timm:NAME@random``): throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from lifebench import features
from lifebench.backbones import load_backbone
from lifebench.features import datapath, embed, make_encoder, resolve_device
from lifebench.images import load_rgb
from lifebench.tasks.base import Examples

DEFAULT_GPU_MODELS = "vit_base_patch16_224,vit_large_patch14_224"
DEFAULT_CPU_MODELS = "vit_small_patch16_224,vit_base_patch16_224"


# ----------------------------------------------------------------------------------- synthetic photos


def synthetic_photo(seed: int, width: int = 500, height: int = 375) -> Image.Image:
    """A natural-ish photo: smooth colour gradients, filled shapes, multi-scale texture and mild noise.

    Tuned so that quality-90 JPEGs come out near the size of real 500x375 photos (about 80 kB), since
    entropy decoding time grows with the compressed size.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 215, 3)
    tilt = rng.uniform(-0.25, 0.25, (3, 2))
    chans = [base[c] + tilt[c, 0] * (xx - width / 2) + tilt[c, 1] * (yy - height / 2) for c in range(3)]
    img = Image.fromarray(np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(20, width / 2), rng.uniform(20, height / 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = (x0, y0, x0 + w, y0 + h)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    arr = np.asarray(img, dtype=np.float32)
    for cell, amp in ((64, 14.0), (16, 10.0), (4, 12.0), (2, 12.0)):  # foliage-like texture at a few scales
        field = rng.normal(0, amp, (height // cell + 2, width // cell + 2, 1)).astype(np.float32)
        up = Image.fromarray(field[..., 0]).resize((width, height), Image.Resampling.BICUBIC)
        arr += np.asarray(up, dtype=np.float32)[..., None]
    arr += rng.normal(0, 5.0, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write_one(args: tuple[str, int, int, int]) -> str:
    path, seed, width, height = args
    synthetic_photo(seed, width, height).save(path + ".tmp", "JPEG", quality=90)
    os.replace(path + ".tmp", path)  # a killed run leaves no half-written JPEG for the next run to reuse
    return path


def make_jpegs(folder: Path, n: int, width: int = 500, height: int = 375, workers: int | None = None) -> list[str]:
    """Write ``n`` synthetic JPEGs into ``folder`` (in parallel) and return their paths.

    Image i is a pure function of (i, width, height), so files already in ``folder`` under the name that encodes
    all three are reused: several runs with ``--dir`` write their JPEGs once (bench/gpu_check.sh relies on it)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"img{i:06d}_{width}x{height}.jpg") for i in range(n)]
    jobs = [(p, i, width, height) for i, p in enumerate(paths) if not os.path.exists(p)]
    workers = workers or max(1, min(16, (os.cpu_count() or 1)))
    if workers == 1 or len(jobs) < 64:
        for j in jobs:
            _write_one(j)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_one, jobs, chunksize=64))
    return paths


def examples_for(paths: list[str]) -> Examples:
    n = len(paths)
    return Examples(ids=np.array([f"i{k}" for k in range(n)]), paths=np.array(paths), labels=np.array(["x"] * n))


# --------------------------------------------------------------------------------------- measurements


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_images_per_s(backbone, device: torch.device, batch_size: int, n_images: int, compile: bool,  # noqa: A002
                         warmup: int = 2) -> float:
    """(a): images/s of the forward pass alone on random pixels already on ``device`` (about ``n_images``)."""
    crop = backbone.preprocess.crop
    bs = min(batch_size, n_images)
    encode = make_encoder(backbone, device, batch_size, compile)
    x = torch.randn(bs, 3, crop, crop, device=device)
    for _ in range(warmup):
        encode(x)
    _sync(device)
    steps = max(1, round(n_images / bs))
    t0 = time.perf_counter()
    for _ in range(steps):
        out = encode(x)
    out.cpu()  # the last result must arrive, as embed's must
    _sync(device)
    return steps * bs / (time.perf_counter() - t0)


def embed_images_per_s(backbone, paths: list[str], device: torch.device, batch_size: int, compile: bool,  # noqa: A002
                       decode: str, workers: int | None) -> tuple[float, float]:
    """(b): images/s of ``embed`` from the files (no cache), after a short warm-up; also its wall seconds."""
    n_warm = batch_size if device.type == "cuda" else 4  # CUDA: nvJPEG, cuBLAS and compile initialise
    embed(backbone, examples_for(paths[:n_warm]), device=device, batch_size=batch_size, compile=compile,
          decode=decode, num_workers=0, show_progress=False)
    ex = examples_for(paths)
    _sync(device)
    t0 = time.perf_counter()
    embed(backbone, ex, device=device, batch_size=batch_size, compile=compile, decode=decode,
          num_workers=workers, show_progress=False)
    _sync(device)
    seconds = time.perf_counter() - t0
    return len(paths) / seconds, seconds


def data_images_per_s(backbone, paths: list[str], device: torch.device, batch_size: int, decode: str,
                      workers: int | None) -> float:
    """The data path alone (read, decode, resize, crop, normalise; no model): images/s."""
    mode = datapath.resolve_decode(decode, device)
    idx = np.arange(len(paths))
    workers = datapath.default_workers(len(paths), mode, device) if workers is None else workers
    t0 = time.perf_counter()
    for batch in datapath.iter_batches(mode, np.array(paths), idx, backbone.preprocess, batch_size, device, workers):
        last = batch.pixels
    last.sum().item()  # wait for the device
    return len(paths) / (time.perf_counter() - t0)


def run_model(name: str, paths: list[str], device: torch.device, args) -> dict:
    backbone = load_backbone(f"timm:{name}@random")
    backbone.to(device)
    bs = args.batch_size or features.auto_batch_size(backbone, device)
    mode = datapath.resolve_decode(args.decode, device)
    workers = args.workers if args.workers is not None else datapath.default_workers(len(paths), mode, device)
    row = {"model": name, "batch_size": bs, "decode": datapath.decode_identity(mode, device), "workers": workers,
           "compile": args.compile}
    if args.data_only:
        runs = [data_images_per_s(backbone, paths, device, bs, args.decode, workers) for _ in range(args.repeats)]
        return {**row, "data_images_per_s": max(runs), "data_runs": runs}
    fwd, emb, secs = [], [], []
    for _ in range(args.repeats):  # interleaved, so that a burst of load elsewhere hits both alike
        fwd.append(forward_images_per_s(backbone, device, bs, len(paths), args.compile))
        e, s = embed_images_per_s(backbone, paths, device, bs, args.compile, args.decode, args.workers)
        emb.append(e)
        secs.append(s)
    ratios = [e / f for e, f in zip(emb, fwd, strict=True)]
    return {**row, "forward_images_per_s": max(fwd), "embed_images_per_s": max(emb), "embed_seconds": min(secs),
            "ratio": max(emb) / max(fwd), "ratio_median_of_pairs": float(np.median(ratios)),
            "forward_runs": fwd, "embed_runs": emb}


# ------------------------------------------------------------------------------- decode-path differences


def compare_paths(folder: Path, device: torch.device, model: str, n: int) -> list[dict]:
    """Mean/max absolute difference of embeddings between decode paths, for a random timm model.

    Pairs: "pil" vs "pil-draft" on 1600x1200 JPEGs (where draft decoding engages), "pil" vs "tensor" on
    500x375 JPEGs (and vs "tensor" on CUDA when available), plus, at the pixel level, what torch's own
    antialiased bicubic resize would have changed (the reason the tensor path emulates PIL instead).
    """
    backbone = load_backbone(f"timm:{model}@random")
    small = make_jpegs(folder / "small", n)
    large = make_jpegs(folder / "large", n, 1600, 1200)
    rows = []

    def vectors(paths: list[str], decode: str, dev: torch.device) -> np.ndarray:
        return embed(backbone, examples_for(paths), device=dev, decode=decode, num_workers=0, batch_size=16,
                     show_progress=False).vectors

    cpu = torch.device("cpu")
    pairs = [("500x375", small, ("pil", cpu), ("tensor", cpu)),
             ("1600x1200", large, ("pil", cpu), ("pil-draft", cpu))]
    if device.type == "cuda":
        pairs.append(("500x375", small, ("pil", cpu), ("tensor", device)))
    for size, paths, (da, va), (db, vb) in pairs:
        a, b = vectors(paths, da, va), vectors(paths, db, vb)
        diff = np.abs(a - b)
        cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        rows.append({"images": size, "a": f"{da}@{va.type}", "b": f"{db}@{vb.type}", "n": len(paths),
                     "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
                     "mean_abs_value": float(np.abs(a).mean()), "min_cosine": float(cos.min())})
    # scale reference: the GPU path runs the model under bf16 autocast; what does that alone change?
    pixels = torch.stack([datapath.preprocess_file(p, backbone.preprocess) for p in small])
    backbone.to(cpu)
    with torch.inference_mode():
        a = backbone.encode_images(pixels).float().numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = backbone.encode_images(pixels).float().numpy()
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    rows.append({"images": "500x375", "a": "fp32", "b": "bf16 autocast (CPU)", "n": len(small),
                 "mean_abs_diff": float(np.abs(a - b).mean()), "max_abs_diff": float(np.abs(a - b).max()),
                 "mean_abs_value": float(np.abs(a).mean()), "min_cosine": float(cos.min())})
    pre = backbone.preprocess
    torch_px = []
    for p in small[: min(16, len(small))]:
        img = load_rgb(p)
        geo = pre.geometry(*img.size)
        ref = np.asarray(img.resize((geo.new_w, geo.new_h), Image.Resampling.BICUBIC), dtype=np.float64)
        t = torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy()).float()[None]
        alt = torch.nn.functional.interpolate(t, size=(geo.new_h, geo.new_w), mode="bicubic", antialias=True)
        alt = alt.round().clamp(0, 255)[0].permute(1, 2, 0).numpy()
        torch_px.append(np.abs(ref - alt))
    px = np.concatenate([d.ravel() for d in torch_px])
    rows.append({"images": "500x375", "a": "PIL bicubic resize", "b": "torch interpolate(antialias=True)",
                 "n": len(torch_px), "mean_abs_diff_levels": float(px.mean()), "max_abs_diff_levels": float(px.max()),
                 "share_pixels_differing": float((px > 0).mean())})
    return rows


# ---------------------------------------------------------------------------------------------- main


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    ap.add_argument("--n-images", type=int, default=None, help="JPEGs to embed (default 20000 on CUDA, 256 on CPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: auto (32 on CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (both measurements)")
    ap.add_argument("--models", default=None, help=f"timm names (GPU default {DEFAULT_GPU_MODELS}; "
                    f"CPU default {DEFAULT_CPU_MODELS})")
    ap.add_argument("--decode", default="auto", help="data path: auto, pil, pil-draft or tensor")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: lifebench's choice)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads in the main process")
    ap.add_argument("--dir", default=None, help="folder for the JPEGs (default: a temporary folder)")
    ap.add_argument("--json-out", default=None, help="also write the results as JSON here")
    ap.add_argument("--compare", action="store_true", help="measure embedding differences between decode paths")
    ap.add_argument("--compare-model", default="vit_small_patch16_224", help="timm model for --compare")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; best of each is reported")
    ap.add_argument("--data-only", action="store_true", help="time the data path alone (no model forward)")
    ap.add_argument("--image-size", default="500x375", help="synthetic JPEG size, WxH (default 500x375)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n_images or (20000 if device.type == "cuda" else 256)
    names = (args.models or (DEFAULT_GPU_MODELS if device.type == "cuda" else DEFAULT_CPU_MODELS)).split(",")
    header = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "cpu_cores": datapath._cores(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "n_images": n,
              "load_before": _load()}
    print(json.dumps(header))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir or tmp)
        results: dict = {"header": header}
        if args.compare:
            rows = compare_paths(folder / "compare", device, args.compare_model, min(n, 32))
            for r in rows:
                print(json.dumps(r))
            results["compare"] = rows
        else:
            t0 = time.perf_counter()
            width, height = (int(v) for v in args.image_size.lower().split("x"))
            paths = make_jpegs(folder / "jpegs", n, width, height)
            mb = sum(os.path.getsize(p) for p in paths) / 1e6
            print(f"wrote {n} JPEGs {width}x{height} q90 ({mb / n * 1000:.0f} kB each) in "
                  f"{time.perf_counter() - t0:.1f} s")
            rows = []
            for name in names:
                r = run_model(name, paths, device, args)
                rows.append(r)
                if args.data_only:
                    print(f"{r['model']:28s} batch {r['batch_size']:4d} {r['decode']:>32s} workers {r['workers']:2d}"
                          f"  data path {r['data_images_per_s']:9.1f} img/s", flush=True)
                else:
                    print(f"{r['model']:28s} batch {r['batch_size']:4d} {r['decode']:>32s} workers {r['workers']:2d}"
                          f"  forward {r['forward_images_per_s']:9.1f} img/s  embed {r['embed_images_per_s']:9.1f}"
                          f" img/s  ratio {r['ratio']:.3f} (median of pairs {r['ratio_median_of_pairs']:.3f})",
                          flush=True)
            results["runs"] = rows
        header["load_after"] = _load()
        print(json.dumps({"load_after": header["load_after"]}))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
