"""The embedding cache: hits, misses on anything that changes the vectors, resume, kill safety, bad images."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TinyBackbone, write_image
from lifebench.errors import BadImageError
from lifebench.features import embed
from lifebench.images import load_rgb
from lifebench.tasks.base import Examples


def _examples(root: Path, n: int = 20, seed: int = 0) -> Examples:
    rng = np.random.default_rng(seed)
    paths = [str(write_image(root / f"img{i:03d}.png", rng, size=(30 + i, 24))) for i in range(n)]
    return Examples(ids=np.array([f"img{i:03d}" for i in range(n)]), paths=np.array(paths),
                    labels=np.array(["a", "b"] * (n // 2)))


def _reference(backbone, examples) -> np.ndarray:
    x = torch.stack([backbone.preprocess(load_rgb(p)) for p in examples.paths])
    with torch.inference_mode():
        return backbone.encode_images(x).numpy()


def test_fresh_embedding_equals_direct_forward(tmp_path):
    ex = _examples(tmp_path / "img")
    bb = TinyBackbone()
    emb = embed(bb, ex, cache_dir=tmp_path / "cache", batch_size=7, num_workers=0, device="cpu")
    np.testing.assert_allclose(emb.vectors, _reference(TinyBackbone(), ex), rtol=1e-6, atol=1e-6)
    assert emb.n_encoded == 20 and not emb.from_cache and emb.ok.all()
    assert list(emb.ids) == list(ex.ids)


def test_cache_hit_does_no_forward_pass_and_returns_equal_vectors(tmp_path):
    ex = _examples(tmp_path / "img")
    first = embed(TinyBackbone(), ex, cache_dir=tmp_path / "cache", device="cpu", num_workers=0)
    bb = TinyBackbone()
    second = embed(bb, ex, cache_dir=tmp_path / "cache", device="cpu", num_workers=0)
    assert bb.calls == 0 and second.from_cache and second.n_encoded == 0
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert second.key == first.key


def test_cache_misses_when_anything_that_changes_vectors_changes(tmp_path):
    ex = _examples(tmp_path / "img")
    cache = tmp_path / "cache"
    base = embed(TinyBackbone(), ex, cache_dir=cache, device="cpu", num_workers=0)
    # other weights
    assert embed(TinyBackbone(seed=1), ex, cache_dir=cache, device="cpu", num_workers=0).n_encoded == 20
    # other preprocessing
    assert embed(TinyBackbone(crop=6), ex, cache_dir=cache, device="cpu", num_workers=0).n_encoded == 20
    # a rewritten image file
    p = Path(ex.paths[3])
    write_image(p, np.random.default_rng(99), size=(33, 24))
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    changed = embed(TinyBackbone(), ex, cache_dir=cache, device="cpu", num_workers=0)
    assert changed.n_encoded == 20 and changed.key != base.key
    assert not np.allclose(changed.vectors[3], base.vectors[3])
    np.testing.assert_allclose(changed.vectors[4], base.vectors[4])


def test_resume_after_a_crash_computes_only_missing_shards(tmp_path):
    ex = _examples(tmp_path / "img", n=20)
    cache = tmp_path / "cache"

    class Crashing(TinyBackbone):
        def encode_images(self, pixels):
            if self.calls >= 8:
                raise RuntimeError("simulated crash")
            return super().encode_images(pixels)

    with pytest.raises(RuntimeError, match="simulated crash"):
        embed(Crashing(), ex, cache_dir=cache, device="cpu", batch_size=4, num_workers=0, shard_rows=4)
    entry = next((cache / "embeddings").iterdir())
    assert sorted(p.name for p in entry.glob("shard-*.npz")) == ["shard-00000.npz", "shard-00001.npz"]
    assert not (entry / "meta.json").exists()
    resumed = embed(TinyBackbone(), ex, cache_dir=cache, device="cpu", batch_size=4, num_workers=0, shard_rows=4)
    assert resumed.n_encoded == 12
    np.testing.assert_allclose(resumed.vectors, _reference(TinyBackbone(), ex), rtol=1e-6, atol=1e-6)
    assert (entry / "meta.json").exists()


def test_corrupt_shard_is_discarded_and_recomputed(tmp_path):
    ex = _examples(tmp_path / "img", n=8)
    cache = tmp_path / "cache"
    embed(TinyBackbone(), ex, cache_dir=cache, device="cpu", num_workers=0, shard_rows=4)
    shard = next((cache / "embeddings").iterdir()) / "shard-00001.npz"
    shard.write_bytes(shard.read_bytes()[:50])
    again = embed(TinyBackbone(), ex, cache_dir=cache, device="cpu", num_workers=0, shard_rows=4)
    assert again.n_encoded == 4
    np.testing.assert_allclose(again.vectors, _reference(TinyBackbone(), ex), rtol=1e-6, atol=1e-6)


_KILL_SCRIPT = """
import sys, time, numpy as np, torch
sys.path.insert(0, {tests!r})
from conftest import TinyBackbone
from lifebench.features import embed
from lifebench.tasks.base import Examples
paths = np.array(sorted(__import__('glob').glob({img!r} + '/*.png')))
ex = Examples(ids=np.array([p[-10:] for p in paths]), paths=paths, labels=np.array(['a'] * len(paths)))
class Slow(TinyBackbone):
    def encode_images(self, x):
        time.sleep(0.2)  # 6 s in all: the kill lands mid-run even on a loaded machine
        return super().encode_images(x)
print('start', flush=True)
embed(Slow(), ex, cache_dir={cache!r}, device='cpu', batch_size=2, num_workers=0, shard_rows=4)
"""


def test_kill_minus_9_leaves_only_whole_entries(tmp_path):
    ex = _examples(tmp_path / "img", n=60)
    cache = tmp_path / "cache"
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), img=str(tmp_path / "img"), cache=str(cache))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "start"
    deadline = time.time() + 60
    entry_dir = cache / "embeddings"
    while time.time() < deadline and not (entry_dir.exists() and list(entry_dir.glob("*/shard-00002.npz"))):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (entry,) = entry_dir.iterdir()
    assert not (entry / "meta.json").exists()
    shards = sorted(entry.glob("shard-*.npz"))
    assert 3 <= len(shards) < 15
    ex_sorted = Examples(ids=np.array([p[-10:] for p in sorted(ex.paths)]), paths=np.array(sorted(ex.paths)),
                         labels=np.array(["a"] * 60))
    ref = _reference(TinyBackbone(), ex_sorted)
    for shard in shards:  # every shard on disk is whole and correct
        s = int(shard.stem.split("-")[1])
        with np.load(shard) as z:
            np.testing.assert_allclose(z["vectors"], ref[4 * s : 4 * s + 4], rtol=1e-6, atol=1e-6)
    resumed = embed(TinyBackbone(), ex_sorted, cache_dir=cache, device="cpu", num_workers=0, shard_rows=4)
    assert resumed.n_encoded == 60 - 4 * len(shards)
    np.testing.assert_allclose(resumed.vectors, ref, rtol=1e-6, atol=1e-6)


def test_bad_image_stops_unless_skipped(tmp_path):
    ex = _examples(tmp_path / "img", n=10)
    Path(ex.paths[6]).write_bytes(b"")
    with pytest.raises(BadImageError, match="img006.png"):
        embed(TinyBackbone(), ex, cache_dir=tmp_path / "cache", device="cpu", num_workers=0)
    emb = embed(TinyBackbone(), ex, cache_dir=tmp_path / "cache2", device="cpu", num_workers=0, skip_bad_images=True)
    assert emb.ok.sum() == 9 and not emb.ok[6] and list(emb.errors) == ["img006"]
    assert np.all(emb.vectors[6] == 0)
    # the cached entry remembers the bad image: without --skip-bad-images it still stops
    with pytest.raises(BadImageError, match="img006.png"):
        embed(TinyBackbone(), ex, cache_dir=tmp_path / "cache2", device="cpu", num_workers=0)


def test_worker_processes_give_the_same_vectors(tmp_path):
    ex = _examples(tmp_path / "img", n=12)
    a = embed(TinyBackbone(), ex, cache_dir=None, device="cpu", num_workers=0, batch_size=5)
    b = embed(TinyBackbone(), ex, cache_dir=None, device="cpu", num_workers=2, batch_size=5)
    np.testing.assert_array_equal(a.vectors, b.vectors)


# ---------------------------------------------------------------------- image decoding (issue 12, defect 10)

def test_cache_misses_when_the_decoding_changes_and_hits_when_it_does_not(tmp_path):
    from PIL import Image

    ex = _examples(tmp_path / "img", n=6)
    arr = np.zeros((24, 30, 4), dtype=np.uint8)
    arr[..., 0], arr[:, :15, 3] = 200, 255  # a half-transparent cut-out
    Image.fromarray(arr, "RGBA").save(ex.paths[2])
    cache = tmp_path / "cache"
    runs = {d: embed(TinyBackbone(), ex, cache_dir=cache, device="cpu", num_workers=0, decode=d)
            for d in ("lifebench", "full", "reference")}
    assert [r.n_encoded for r in runs.values()] == [6, 6, 6]
    assert len({r.key for r in runs.values()}) == 3
    again = embed(TinyBackbone(), ex, cache_dir=cache, device="cpu", num_workers=0, decode="reference")
    assert again.n_encoded == 0 and again.key == runs["reference"].key
    # the transparent image embeds differently; the opaque PNGs are the same pixels under every decoding
    assert not np.allclose(runs["reference"].vectors[2], runs["lifebench"].vectors[2])
    np.testing.assert_allclose(runs["reference"].vectors[[0, 1, 3]], runs["lifebench"].vectors[[0, 1, 3]])
    with Image.open(ex.paths[2]) as img:
        x = TinyBackbone().preprocess(img.convert("RGB"))[None]
    with torch.inference_mode():
        np.testing.assert_allclose(runs["reference"].vectors[2], TinyBackbone().encode_images(x).numpy()[0],
                                   rtol=1e-6, atol=1e-6)


def _cutout_folder(root: Path) -> Path:
    """Two classes of four PNGs each; every image a cut-out whose transparent half stores a colour."""
    from PIL import Image

    rng = np.random.default_rng(5)
    for c, colour in (("ant", (200, 30, 30)), ("bee", (30, 200, 30))):
        for i in range(4):
            arr = np.zeros((36, 40, 4), dtype=np.uint8)
            arr[..., :3] = (rng.integers(0, 256, (36, 40, 3)) * 0.3 + np.asarray(colour) * 0.7).astype(np.uint8)
            arr[:, : 20 + i, 3] = 255
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr, "RGBA").save(root / c / f"{c}{i}.png")
    return root


def test_embed_decode_option_reaches_the_embedding(tmp_path):
    """``lifebench embed --decode reference`` exports the pixels backbone's view of ``Image.open(p).convert("RGB")``;
    the default composites the transparent half on white."""
    import csv

    from PIL import Image

    from lifebench.backbones import load_backbone
    from lifebench.cli import main

    folder = _cutout_folder(tmp_path / "cutouts")
    out = {}
    for decode in ("reference", "lifebench"):
        path = tmp_path / f"{decode}.npy"
        assert main(["-q", "embed", "--task", str(folder), "--model", "pixels", "--out", str(path), "--device", "cpu",
                     "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--decode", decode]) == 0
        with open(path.with_suffix(".ids.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        out[decode] = (np.load(path), rows)
    vectors, rows = out["reference"]
    pre = load_backbone("pixels").preprocess
    for row in rows:
        label, ident = row["label"], row["id"]
        (file,) = [p for p in (folder / label).iterdir() if p.stem in ident]
        with Image.open(file) as img:
            want = pre(img.convert("RGB")).flatten().numpy()
        np.testing.assert_allclose(vectors[int(row["row"])], want, atol=1e-6)
        assert not np.allclose(out["lifebench"][0][int(row["row"])], want)


def test_decode_is_part_of_the_job_config_only_when_not_the_default(tmp_path):
    """Results under different decodings never share a config hash; the default keeps earlier hashes."""
    from lifebench.runner import expand
    from lifebench.runner.sweep import load as load_sweep
    from lifebench.tasks import resolve_task

    task = resolve_task(str(_cutout_folder(tmp_path / "cutouts")))
    (plain,) = expand([task], ["pixels"], ["knn"])
    (default,) = expand([task], ["pixels"], ["knn"], settings={"decode": "lifebench", "answer_scoring": "strict"})
    (ref,) = expand([task], ["pixels"], ["knn"], settings={"decode": "reference", "answer_scoring": "strict"})
    (full,) = expand([task], ["pixels"], ["knn"], settings={"decode": "full"})
    assert plain.config_hash == default.config_hash and "decode" not in default.config()
    assert ref.config()["decode"] == "reference" and full.config()["decode"] == "full"
    assert len({default.config_hash, ref.config_hash, full.config_hash}) == 3
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('models = ["pixels"]\ntasks = ["x"]\nstore = "r.sqlite"\ndecode = "reference"\n')
    argv = load_sweep(sweep).run_argv
    assert argv[argv.index("--decode") + 1] == "reference"


def test_run_decode_option_is_a_new_experiment_embedded_with_that_decoding(tmp_path, capsys):
    from lifebench.backbones import load_backbone
    from lifebench.cli import main
    from lifebench.store import Store
    from lifebench.tasks import resolve_task

    folder = _cutout_folder(tmp_path / "cutouts")
    argv = ["-q", "run", "--task", str(folder), "--model", "pixels", "--protocol", "knn", "--param", "n_neighbors=1",
            "--device", "cpu", "--workers", "0", "--store", str(tmp_path / "r.sqlite"), "--cache-dir",
            str(tmp_path / "cache"), "--no-report", "--test-size", "0.5"]
    assert main(argv) == 0
    assert main([*argv, "--decode", "reference"]) == 0
    assert "1 experiments run, 0 already in the store" in capsys.readouterr().out.splitlines()[-1]
    with Store(tmp_path / "r.sqlite") as store:
        exps = {e.config.get("decode", "lifebench"): e for e in store.experiments()}
    assert set(exps) == {"lifebench", "reference"}
    task = resolve_task(str(folder), test_size=0.5)
    want = embed(load_backbone("pixels"), task.examples, cache_dir=tmp_path / "cache", device="cpu", num_workers=0,
                 decode="reference")
    assert want.n_encoded == 0 and exps["reference"].fit_info["embedding_key"] == want.key
    assert exps["lifebench"].fit_info["embedding_key"] != want.key
