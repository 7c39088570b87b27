"""Project the wall time of the whole BioBench suite for one model from measured per-stage throughput.

    minutes(task) = images(task) / embed_rate  +  probe_time(task)
    total         = sum over tasks  +  one-off overhead (model load, batch-size search, compile)

Each image is embedded once (lifebench caches embeddings, so the n_train grid and reruns reuse them) and
video tasks embed every sampled frame. Image counts come from the BioBench reference notes (shared/reference/biobench.md)
(sections 1.1/1.2); counts it does not give are marked "assumed" below, with the reason.

Inputs:

* embedding images/s: ``--embed-ips``, or ``--from-json`` (the JSON that ``bench/embed.py --json-out`` wrote;
  its ``--model`` row is used), or ``--measure`` (runs bench/embed.py's measurement here, small N);
* probe time: ``--probe-seconds`` per task, or ``--measure-probe`` (fits lifebench's LogisticProbe on random
  features on this device and scales it by train size x classes x number of fits: a rough guide only).

Examples::

    python bench/suite_projection.py --embed-ips 3000 --probe-seconds 20
    python bench/suite_projection.py --from-json embed-h100.json --model vit_large_patch14_224 --measure-probe
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Task:
    name: str
    train: int
    test: int
    classes: int
    frames: int = 1
    """Frames embedded per example (video clips); the counts above are clips then."""
    source: str = ""
    prior_work: bool = False

    @property
    def images(self) -> int:
        return (self.train + self.test) * self.frames


# Counts: "md" = the BioBench reference notes (shared/reference/biobench.md); "assumed" = not given there (reason stated).
TASKS = [
    Task("beluga", 5_902, 0, 788, source="assumed: md gives no count; LILA Beluga ID 2022 has 5,902 images of "
         "788 individuals, embedded once (leave-one-out kNN, no test split)"),
    Task("ecdysis", 8_000, 2_000, 500, source="assumed: md gives no count; 10,000 specimen photos, 80/20 split"),
    Task("fishnet", 75_631, 18_901, 2, source="md (draft paper table); 9 binary traits"),
    Task("fungiclef", 295_938, 60_832, 1_604, source="md (draft paper table); 300 px JPEGs"),
    Task("herbarium19", 34_225, 2_679, 683, source="md (docstring); large sheets, about 1.1 MB per JPEG"),
    Task("iwildcam", 129_809, 42_791, 182, source="test md (logbook 42.7K); train assumed: WILDS v2.0 train split"),
    Task("kabr", 9_000, 3_000, 8, frames=16, source="assumed: md gives no clip count; >10 h of mini-scenes at "
         "<= 90 frames per clip, about 12,000 clips, 16 frames each"),
    Task("mammalnet", 14_000, 4_000, 12, frames=32, source="assumed: md gives no clip count; about 18,000 "
         "trimmed clips (MammalNet has over 18K videos), 32 frames each"),
    Task("plankton", 63_074, 151_236, 50, source="md (draft paper table); small grayscale PNGs"),
    Task("plantnet", 243_916, 31_118, 1_081, source="md (draft paper table)"),
    Task("imagenet1k", 1_281_167, 50_000, 1_000, source="md (1.28M train; validation); prior-work task",
         prior_work=True),
    Task("inat21", 500_000, 100_000, 10_000, source="md (train_mini 500k, val 100k); prior-work task",
         prior_work=True),
    Task("newt", 16_400, 16_400, 2, source="test md (logbook 16.4K); train assumed the same size; 164 binary "
         "tasks; prior-work task", prior_work=True),
]


def _bench_module():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import embed as bench_embed  # bench/embed.py

    return bench_embed


def embed_rate_from_json(path: str, model: str) -> float:
    data = json.loads(Path(path).read_text())
    for row in data.get("runs", []):
        if row["model"] == model:
            return float(row["embed_images_per_s"])
    raise SystemExit(f"no run of model {model!r} in {path}; models there: {[r['model'] for r in data.get('runs', [])]}")


def measure_embed_rate(model: str, device: str, n_images: int) -> float:
    bench_embed = _bench_module()
    out = Path("/tmp") / f"suite-projection-{int(time.time())}.json"
    bench_embed.main(["--device", device, "--n-images", str(n_images), "--models", model, "--json-out", str(out)])
    return embed_rate_from_json(str(out), model)


def measure_probe(device: str, dim: int, n_ref: int = 4096, classes_ref: int = 64) -> float:
    """Seconds of one LogisticProbe fit (fixed C) on ``n_ref`` random ``dim``-d features with ``classes_ref`` classes."""
    from lifebench.protocols.logreg import LogisticProbe

    rng = np.random.default_rng(0)
    y = rng.integers(0, classes_ref, n_ref)
    centres = rng.normal(0, 1, (classes_ref, dim)).astype(np.float32)
    x = centres[y] + rng.normal(0, 2.0, (n_ref, dim)).astype(np.float32)
    probe = LogisticProbe(C=1.0, device=device)
    probe.fit(x[:256], y[:256])  # warm-up
    t0 = time.perf_counter()
    probe.fit(x, y)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--embed-ips", type=float, help="embedding throughput from files, images/s")
    src.add_argument("--from-json", help="JSON written by bench/embed.py --json-out")
    src.add_argument("--measure", action="store_true", help="measure the embedding throughput here")
    ap.add_argument("--model", default="vit_large_patch14_224", help="timm model (for --from-json / --measure)")
    ap.add_argument("--device", default="auto", help="device for --measure / --measure-probe")
    ap.add_argument("--n-images", type=int, default=512, help="JPEGs for --measure")
    ap.add_argument("--probe-seconds", type=float, default=None, help="probe time per task, seconds")
    ap.add_argument("--measure-probe", action="store_true", help="estimate probe time from a quick fit here")
    ap.add_argument("--dim", type=int, default=1024, help="embedding width for --measure-probe (ViT-L: 1024)")
    ap.add_argument("--fits", type=int, default=14, help="probe fits per task: C grid (13) + refit")
    ap.add_argument("--overhead-s", type=float, default=60.0, help="one-off: model load, batch search, compile")
    ap.add_argument("--benchmark-only", action="store_true", help="leave out the prior-work tasks")
    ap.add_argument("--skip", default="", help="comma-separated tasks to leave out, e.g. kabr,mammalnet")
    args = ap.parse_args(argv)

    if args.embed_ips:
        rate, rate_src = args.embed_ips, "--embed-ips"
    elif args.from_json:
        rate, rate_src = embed_rate_from_json(args.from_json, args.model), f"{args.from_json} ({args.model})"
    else:
        rate, rate_src = measure_embed_rate(args.model, args.device, args.n_images), f"measured here ({args.model})"
    probe_ref = None
    if args.measure_probe:
        from lifebench.features import resolve_device

        probe_ref = measure_probe(str(resolve_device(args.device)), args.dim)

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - {t.name for t in TASKS}
    if unknown:
        raise SystemExit(f"unknown task(s) {sorted(unknown)} in --skip; tasks: {[t.name for t in TASKS]}")
    tasks = [t for t in TASKS if not (args.benchmark_only and t.prior_work) and t.name not in skip]
    print(f"embedding rate: {rate:.1f} images/s ({rate_src}); probe: "
          + (f"{args.probe_seconds:.1f} s per task" if args.probe_seconds is not None else
             f"measured {probe_ref:.2f} s per fit of 4096 x {args.dim} x 64 classes, scaled" if probe_ref else
             "not included"))
    print(f"{'task':12s} {'images':>10s} {'embed min':>10s} {'probe min':>10s} {'total min':>10s}  source")
    total_e = total_p = 0.0
    for t in tasks:
        e = t.images / rate / 60
        if args.probe_seconds is not None:
            p = args.probe_seconds / 60
        elif probe_ref is not None:
            # one fit costs ~ examples x classes (a d x classes matmul per L-BFGS step); clips count once
            p = probe_ref * t.train / 4096 * max(1.0, t.classes / 64) * args.fits / 60
        else:
            p = 0.0
        total_e, total_p = total_e + e, total_p + p
        print(f"{t.name:12s} {t.images:10,d} {e:10.2f} {p:10.2f} {e + p:10.2f}  {t.source}")
    overhead = args.overhead_s / 60
    n = sum(t.images for t in tasks)
    print(f"{'overhead':12s} {'':>10s} {'':>10s} {'':>10s} {overhead:10.2f}  model load, batch search, compile")
    print(f"{'TOTAL':12s} {n:10,d} {total_e:10.2f} {total_p:10.2f} {total_e + total_p + overhead:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
