"""MammalNet: web videos of mammals, classified by behaviour (12 behaviours; Chen et al., CVPR 2023).

Source: :data:`BASE_URL` (public S3), archives ``annotation.tar`` and ``full_video.tar.gz``. No checksums are
published, so each archive's SHA-256 is recorded on first download and checked on every later use. Facts from
BioBench's MammalNet task and download script.

* ``annotation.tar`` unpacks to ``annotation/``:
  ``annotation/composition/{train,test}.csv`` are headerless, space-delimited rows
  ``trimmed_videos/<clip>.mp4 <behavior_id> <species_id>``; ``annotation/detection_annotations.json`` maps each
  full video id to its annotated segments (``annotations: [{"label", "segment": [start_s, end_s]}, ...]``);
  ``annotation/behavior_to_id.txt`` (``<name><TAB><id>`` per line, if present) names the behaviours.
* ``full_video.tar.gz`` unpacks to ``full_videos/<video id>.mp4``.
* Clip names: a video with one annotated segment gives the clip ``<video id>``; one with several gives
  ``<video id>_1``, ``<video id>_2``, ... in annotation order (BioBench's trimming convention).
* Frames (:func:`prepare`, the last step of :func:`download`): for every clip listed in the composition files,
  ``n_frames`` = 32 frames are cut from its segment of the full video: frame ``k`` of the segment is kept when
  ``k % step == 0`` with ``step = max(n_segment_frames // 32, 1)`` (``n_segment_frames`` = segment duration x
  frame rate), the first 32 kept, saved as ``frames/<clip>/frame_01.jpg`` ... ``frame_32.jpg``. This is what
  BioBench's ffmpeg ``select=not(mod(n,step))`` did on its trimmed clips, without writing the trimmed clips.
  PyAV (``pip install 'lifebench[video]'``) decodes if installed, else the ``ffmpeg``/``ffprobe`` programs.
  Each clip's frames are written to a temporary folder renamed into place, so a folder present is complete.

Task: :func:`load` reads only ``annotation/`` and ``frames/`` (extracted frames need no video library). Clips
whose frames folder is missing or holds fewer than 32 frames are skipped with a warning (as BioBench). Examples
are the frames (id = path relative to ``root``), grouped by clip; the runner max-pools each clip's frame
embeddings into one vector (``pool_train = pool_test = "max"``). Label = the behaviour, the CSV's second
column: MammalNet's own loader (Vision-CAIR/MammalNet@d4b2d59 ``animalnet_behavior_composition.py``) splits a row
into ``path, label1, label`` and trains its behaviour head on ``label1``. Protocol: logistic probe,
``composition/train.csv`` -> ``composition/test.csv``; metric: macro-F1 over clips.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from lifebench.errors import DataError
from lifebench.progress import progress
from lifebench.tasks.base import Task
from lifebench.tasks.catalog import Source, TaskSpec, fetch_sources, register
from lifebench.tasks.ecology import clip_task
from lifebench.tasks.fixtures import tar_bytes

__all__ = ["ARCHIVES", "BASE_URL", "N_FRAMES", "clip_segments", "download", "load", "make_fixture",
           "fixture_frames", "missing", "prepare", "video_backend"]

log = logging.getLogger(__name__)

BASE_URL = "https://mammalnet.s3.amazonaws.com"
ARCHIVES = ("annotation.tar", "full_video.tar.gz")
SPLITS = ("train", "test")
N_FRAMES = 32
COMPOSITION = "annotation/composition"
DETECTIONS = "annotation/detection_annotations.json"
BEHAVIOURS = "annotation/behavior_to_id.txt"
_INSTALL = ("install PyAV (pip install 'lifebench[video]') or put the ffmpeg and ffprobe programs on PATH; or "
            "extract the frames elsewhere into frames/<clip>/frame_01.jpg ... frame_32.jpg")


def missing(root: Path) -> str | None:
    root = Path(root)
    for split in SPLITS:
        if not (root / COMPOSITION / f"{split}.csv").is_file():
            return f"no {COMPOSITION}/{split}.csv in {root}"
    if not (root / "frames").is_dir():
        return f"no frames/ folder in {root} (frames are extracted from the videos at the end of the download)"
    return None


# ---------------------------------------------------------------------------------------------- annotations


def _read_composition(path: Path) -> list[tuple[str, str]]:
    """``[(clip, behaviour id), ...]`` from a composition CSV (``trimmed_videos/<clip>.mp4 behaviour species``)."""
    out = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            rel = fields[0]
            folder, _, fname = rel.rpartition("/")
            if len(fields) != 3 or not fname.endswith(".mp4") or not fields[1].isdigit() or not fields[2].isdigit():
                raise DataError(f"mammalnet: line {line_no} of {path} is {line.strip()!r}, expected "
                                "'trimmed_videos/<clip>.mp4 <behavior_id> <species_id>'; download annotation.tar again")
            out.append((fname[: -len(".mp4")], fields[1]))
    return out


def _behaviour_names(root: Path) -> dict[str, str]:
    """Behaviour id -> name from ``behavior_to_id.txt`` when present (either column order), else empty."""
    path = root / BEHAVIOURS
    if not path.is_file():
        return {}
    names = {}
    for line in path.read_text().splitlines():
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 2:
            continue
        name, idx = fields if fields[1].isdigit() else fields[::-1]
        if idx.isdigit():
            names[str(int(idx))] = name
    return names


def clip_segments(root: Path) -> dict[str, tuple[str, float, float]]:
    """Clip name -> (full video id, start s, end s) from ``detection_annotations.json``."""
    path = Path(root) / DETECTIONS
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"mammalnet: cannot read {path} ({e}); download annotation.tar again") from None
    out = {}
    for vid, det in table.items():
        try:
            segments = [(float(a["segment"][0]), float(a["segment"][1])) for a in det["annotations"]]
        except (KeyError, TypeError, ValueError, IndexError):
            raise DataError(f"mammalnet: video {vid!r} in {path} has no readable annotations[].segment; download "
                            "annotation.tar again") from None
        for k, (start, end) in enumerate(segments):
            out[f"{vid}_{k + 1}" if len(segments) > 1 else vid] = (vid, start, end)
    return out


# -------------------------------------------------------------------------------------------------- frames


def video_backend() -> str | None:
    """``"av"`` when PyAV imports, else ``"ffmpeg"`` when ffmpeg and ffprobe are on PATH, else None."""
    try:
        import av  # noqa: F401
        return "av"
    except ImportError:
        pass
    if shutil.which("ffmpeg") and shutil.which("ffprobe"):
        return "ffmpeg"
    return None


def _step(duration: float, fps: float, n_frames: int) -> int:
    return max(round(duration * fps) // n_frames, 1) if fps > 0 else 1


def _frames_av(src: Path, start: float, end: float, out: Path, n_frames: int) -> int:
    import av

    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        step = _step(end - start, fps, n_frames)
        tb = stream.time_base
        offset = stream.start_time or 0
        if start > 0:  # to the key frame at or before the start; frames before it are skipped below
            container.seek(offset + int(start / tb), stream=stream, backward=True)
        k = kept = 0
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float((frame.pts - offset) * tb)
            if t < start - 1e-6:
                continue
            if t >= end:
                break
            if k % step == 0:
                kept += 1
                frame.to_image().save(out / f"frame_{kept:02d}.jpg", quality=95)
                if kept == n_frames:
                    break
            k += 1
    return kept


def _frames_ffmpeg(src: Path, start: float, end: float, out: Path, n_frames: int) -> int:
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=avg_frame_rate", "-of", "default=noprint_wrappers=1:nokey=1", str(src)],
                           capture_output=True, text=True, check=True)
    try:
        fps = float(Fraction(probe.stdout.strip().splitlines()[0]))
    except (ValueError, ZeroDivisionError, IndexError):
        fps = 0.0
    step = _step(end - start, fps, n_frames)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", f"{start:.6f}", "-t", f"{end - start:.6f}",
                    "-i", str(src), "-an", "-vf", f"select=not(mod(n\\,{step})),setpts=N/FRAME_RATE/TB",
                    "-frames:v", str(n_frames), "-vsync", "vfr", "-q:v", "2", str(out / "frame_%02d.jpg")],
                   capture_output=True, text=True, check=True)
    return len(list(out.glob("frame_*.jpg")))


def _extract_clip(backend: str, src: Path, start: float, end: float, dest: Path, n_frames: int) -> int:
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        fn = _frames_av if backend == "av" else _frames_ffmpeg
        kept = fn(src, start, end, tmp, n_frames)
        os.replace(tmp, dest)
        return kept
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare(root: Path, *, n_frames: int = N_FRAMES, workers: int | None = None, show_progress: bool = True,
            backend: str | None = None) -> int:
    """Extract ``n_frames`` frames per clip of the composition files into ``frames/<clip>/``; returns clips done.

    Clips whose frames folder exists are skipped (idempotent). A clip whose full video is missing, or whose
    video cannot be decoded, is skipped with a warning; :func:`load` then skips it too.
    """
    root = Path(root)
    backend = backend or video_backend()
    if backend is None:
        raise DataError(f"mammalnet: extracting frames from {root / 'full_videos'} needs a video decoder; {_INSTALL}")
    segments = clip_segments(root)
    listed = (c for split in SPLITS for c, _ in _read_composition(root / COMPOSITION / f"{split}.csv"))
    clips = list(dict.fromkeys(listed))
    unknown = [c for c in clips if c not in segments]
    if unknown:
        log.warning("mammalnet: %d clips of the composition files have no segment in %s (e.g. %s); skipped",
                    len(unknown), DETECTIONS, unknown[0])
    frames = root / "frames"
    frames.mkdir(exist_ok=True)
    todo = [c for c in clips if c in segments and not (frames / c).is_dir()]
    absent = [c for c in todo if not (root / "full_videos" / f"{segments[c][0]}.mp4").is_file()]
    if absent:
        log.warning("mammalnet: %d clips have no full video in %s (e.g. %s.mp4); skipped", len(absent),
                    root / "full_videos", segments[absent[0]][0])
    todo = [c for c in todo if c not in set(absent)]
    failed: list[tuple[str, str]] = []
    short = 0
    workers = workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool, \
            progress(len(todo), "mammalnet frames", "clip", show_progress) as bar:
        futures = {pool.submit(_extract_clip, backend, root / "full_videos" / f"{segments[c][0]}.mp4",
                               segments[c][1], segments[c][2], frames / c, n_frames): c for c in todo}
        for fut in concurrent.futures.as_completed(futures):
            try:
                short += fut.result() < n_frames
            except Exception as e:  # noqa: BLE001 - one undecodable video must not stop the other clips
                failed.append((futures[fut], str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__))
            bar.update(1)
    if failed:
        log.warning("mammalnet: %d clips could not be decoded (e.g. %s: %s); skipped", len(failed), *failed[0])
    if short:
        log.warning("mammalnet: %d clips are shorter than %d frames; load() skips them", short, n_frames)
    return len(todo) - len(failed)


def download(root: Path, *, base_url: str | None = None, show_progress: bool = True) -> Path:
    """Fetch both archives (:data:`SPEC`'s sources, SHA-256 recorded on first use), unpack them, then extract the
    frames (:func:`prepare`). ``base_url``: a mirror serving the same file names."""
    return (SPEC if base_url is None else SPEC.mirrored(base_url)).download(root, show_progress=show_progress)


def _fetch(spec: TaskSpec, root: Path, *, show_progress: bool = True) -> Path:
    """A video decoder is checked for first, so a missing one is reported before the large video archive is fetched;
    then the sources, then the frames."""
    if video_backend() is None:
        raise DataError(f"mammalnet: the download ends by extracting frames from the videos, which needs a video "
                        f"decoder; {_INSTALL}")
    fetch_sources(spec, root, show_progress=show_progress)
    prepare(root, show_progress=show_progress)
    return root


# ---------------------------------------------------------------------------------------------------- load


def load(root: Path, *, n_frames: int = N_FRAMES, **_: object) -> Task:
    """``composition/train.csv`` -> ``composition/test.csv`` as a frame-level :class:`Task` pooled per clip.

    Reads ``frames/<clip>/frame_01.jpg`` ... ``frame_<n_frames>.jpg``; clips with a missing folder or fewer
    frames are skipped with a warning (counted per split). Raises :class:`DataError` naming a missing file or a
    malformed row.
    """
    root = Path(root)
    why = missing(root)
    if why:
        raise DataError(f"mammalnet: {why}; run: lifebench download mammalnet --dir {root.parent}")
    names = _behaviour_names(root)
    used = {str(int(b)) for split in SPLITS for _, b in _read_composition(root / COMPOSITION / f"{split}.csv")}
    if names and not used <= set(names):
        log.warning("mammalnet: %s does not name behaviour id %s; labels are the behaviour ids", BEHAVIOURS,
                    min(used - set(names), key=int))
        names = {}
    ids, labels, groups, split_of = [], [], [], []
    seen: set[str] = set()
    repeated: Counter[str] = Counter()
    for split in SPLITS:
        rows = _read_composition(root / COMPOSITION / f"{split}.csv")
        no_dir, too_few = [], []
        for clip, behaviour in rows:
            folder = root / "frames" / clip
            try:
                present = {e.name for e in os.scandir(folder)}
            except OSError:
                no_dir.append(clip)
                continue
            files = [f"frame_{k:02d}.jpg" for k in range(1, n_frames + 1)]
            if any(f not in present for f in files):
                too_few.append(clip)
                continue
            if clip in seen:  # its frames are already examples: a clip cannot be in two places
                repeated[split] += 1
                continue
            seen.add(clip)
            for f in files:
                ids.append(f"frames/{clip}/{f}")
                labels.append(names.get(str(int(behaviour)), str(int(behaviour))))
                groups.append(clip)
                split_of.append(split)
        if no_dir:
            log.warning("mammalnet: %d of %d %s clips have no frames folder (e.g. frames/%s); skipped", len(no_dir),
                        len(rows), split, no_dir[0])
        if repeated[split]:
            log.warning("mammalnet: %d %s rows repeat a clip listed before; only its first row is kept",
                        repeated[split], split)
        if too_few:
            log.warning("mammalnet: %d of %d %s clips have fewer than %d frames (e.g. frames/%s); skipped",
                        len(too_few), len(rows), split, n_frames, too_few[0])
    split_arr = np.array(split_of)
    train_idx, test_idx = np.flatnonzero(split_arr == "train"), np.flatnonzero(split_arr == "test")
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise DataError(f"mammalnet: {len(train_idx) // n_frames} train and {len(test_idx) // n_frames} test clips "
                        f"have {n_frames} frames under {root / 'frames'}; extract them: "
                        f"lifebench download mammalnet --dir {root.parent}")
    return clip_task("mammalnet", root, ids, labels, groups, train_idx, test_idx,
                     description=f"MammalNet behaviour: {n_frames} frames per clip, max-pooled per clip",
                     split_source="given (annotation/composition/train.csv -> test.csv)")


# ------------------------------------------------------------------------------------------------- fixture

# Behaviour ids and names of the fixture (a subset of MammalNet's 12) and the colour of their frames.
_FIXTURE_BEHAVIOURS = {0: ("eat food", (210, 40, 40)), 1: ("drink water", (40, 200, 40)), 2: ("groom", (40, 40, 210))}
_FIXTURE_FPS = 25


def _fixture_plan(per_class: int, seed: int) -> tuple[dict, list[tuple[str, str, int, int]]]:
    """(detection annotations, [(split, clip, behaviour id, species id), ...]) of the fixture."""
    rng = np.random.default_rng(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    detections, rows = {}, []
    for split, n in (("train", per_class), ("test", 2)):
        for b in _FIXTURE_BEHAVIOURS:
            for _ in range(n):
                vid = "".join(rng.choice(list(alphabet), 11))
                start = round(float(rng.uniform(0.5, 1.5)), 2)
                segment = {"label": _FIXTURE_BEHAVIOURS[b][0], "segment": [start, start + 4.0]}
                detections[vid] = {"annotations": [segment],
                                   "taxnomy": [{"id": str(b + 10), "name": "Panthera leo"}], "duration": 7,
                                   "resolution": "32x32", "fps": _FIXTURE_FPS, "subset": split,
                                   "url": f"https://www.youtube.com/watch?v={vid}"}
                rows.append((split, vid, b, int(rng.integers(0, 173))))
    # One video with two annotated segments of different behaviours: clips <id>_1 and <id>_2.
    vid = "twoSegments"
    detections[vid] = {"annotations": [{"label": "eat food", "segment": [0.0, 3.0]},
                                       {"label": "groom", "segment": [4.0, 7.0]}],
                       "taxnomy": [], "duration": 8, "resolution": "32x32", "fps": _FIXTURE_FPS, "subset": "test",
                       "url": ""}
    rows += [("test", f"{vid}_1", 0, 5), ("test", f"{vid}_2", 2, 5)]
    return detections, rows


def _segments_of(detections: dict) -> dict[str, list[tuple[float, float, int]]]:
    """Video id -> [(start, end, behaviour id)] of the fixture, to colour the video's frames."""
    by_name = {name: b for b, (name, _) in _FIXTURE_BEHAVIOURS.items()}
    return {vid: [(a["segment"][0], a["segment"][1], by_name[a["label"]]) for a in det["annotations"]]
            for vid, det in detections.items()}


def _colour_at(segments: list[tuple[float, float, int]], t: float) -> tuple[int, int, int]:
    for start, end, b in segments:
        if start <= t < end:
            return _FIXTURE_BEHAVIOURS[b][1]
    return (128, 128, 128)  # outside every segment: grey


def _mp4(segments: list[tuple[float, float, int]], duration: float) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=_FIXTURE_FPS)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 1_000_000  # sharp enough that the band width survives compression
        for i in range(int(duration * _FIXTURE_FPS)):
            arr = np.empty((32, 32, 3), np.uint8)
            arr[:] = _colour_at(segments, i / _FIXTURE_FPS)
            arr[:, : 2 + 3 * (i % 8)] //= 2  # a band whose width tells the frame index modulo 8
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def make_fixture(*, per_class: int = 3, seed: int = 0, videos: bool | None = None) -> dict[str, bytes]:
    """Tiny ``annotation.tar`` (and, with PyAV, ``full_video.tar.gz``) in the real layout, by file name.

    Three behaviours; ``per_class`` train and 2 test clips per behaviour, each one 4 s segment of its own 7 s
    video, plus one test video with two segments (clips ``twoSegments_1`` and ``_2`` of different behaviours).
    Each video is coloured by the behaviour of the segment playing (grey outside segments), at 25 fps and
    32x32 pixels. ``videos`` (default: whether PyAV is installed) adds the video archive.
    """
    detections, rows = _fixture_plan(per_class, seed)
    files = {
        DETECTIONS: json.dumps(detections, indent=1).encode(),
        BEHAVIOURS: "".join(f"{name}\t{b}\n" for b, (name, _) in _FIXTURE_BEHAVIOURS.items()).encode(),
    }
    for split in SPLITS:
        files[f"{COMPOSITION}/{split}.csv"] = "".join(
            f"trimmed_videos/{clip}.mp4 {b} {species}\n" for s, clip, b, species in rows if s == split).encode()
    out = {"annotation.tar": tar_bytes(files, compression="")}
    if videos is None:
        videos = video_backend() == "av"
    if videos:
        segs = _segments_of(detections)
        out["full_video.tar.gz"] = tar_bytes({f"full_videos/{vid}.mp4": _mp4(segs[vid], det["duration"])
                                              for vid, det in detections.items()})
    return out


def fixture_frames(*, per_class: int = 3, seed: int = 0, n_frames: int = N_FRAMES) -> dict[str, bytes]:
    """Already extracted frames for :func:`make_fixture`'s clips, by path under the task root (``frames/...``).

    For tests of :func:`load` without a video decoder: every frame of a clip has its behaviour's colour.
    """
    detections, rows = _fixture_plan(per_class, seed)
    rng = np.random.default_rng(seed + 1)
    out = {}
    for _, clip, b, _ in rows:
        for k in range(1, n_frames + 1):
            arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            arr = (arr * 0.25 + np.asarray(_FIXTURE_BEHAVIOURS[b][1]) * 0.75).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=90)
            out[f"frames/{clip}/frame_{k:02d}.jpg"] = buf.getvalue()
    return out


SPEC = register(TaskSpec(
    name="mammalnet", display="MammalNet", suite="ecology", modality="web video", kingdom="Animalia",
    protocol="logreg", metric="macro_f1", kind="plain", method="logistic probe on max-pooled frame embeddings",
    n_train=None, n_test=None, source="MammalNet videos + annotations", license="see source",
    size="not recorded", load=load, missing=missing, fetch=_fetch,
    fixture=lambda spec, **kw: make_fixture(**kw), base_url=BASE_URL,
    sources=tuple(Source(name) for name in ARCHIVES),
    upstream=("samuelstevens/biobench@6376d97 src/biobench/mammalnet/__init__.py, download.py",
              "Vision-CAIR/MammalNet@d4b2d59 detection/slowfast/datasets/animalnet_behavior_composition.py"),
))
