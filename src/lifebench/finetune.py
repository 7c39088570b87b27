"""Fine-tune a backbone on a task's training split: the checkpoint that ``lifebench forgetting`` studies.

Why this module exists: a scientist deciding whether to fine-tune on their own taxa needs the fine-tuned model
and the frozen one scored side by side on the same suites. ``lifebench finetune MODEL --task T --out CKPT`` makes
the first from the second, with the training pieces of the library the model comes from rather than our own:

* ``open_clip:<ARCH>@<weights>``: contrastive training of both towers with open_clip's ``ClipLoss`` on pairs (image, caption of its class). Captions are
  BioCLIP's: ``"a photo of {text}."`` where ``text`` is one of the text types built from the task's taxonomy
  (:mod:`lifebench.tasks.taxonomy`); with ``text_type="mixed"`` each step draws one type for the whole batch
  with ``random.seed(step); random.choice([sci, com, taxon, sci_com, taxon_com])``, as BioCLIP's
  ``src/training/train.py`` (Imageomics/bioclip @ 4ea3247, ``--text_type random``) does; captions from
  ``scripts/evobio10m/make_wds.py`` (a class without a common name uses its scientific name as one, as
  ``make_txt`` does). The logit scale is clamped to ln(100) after each step, as open_clip trains.
  SigLIP models (a ``logit_bias``, a sigmoid loss) are refused for now.
* ``timm:<name>@<weights>`` (EfficientNet-Lite is ``timm:efficientnet_lite0`` / ``tf_efficientnet_lite0``): the
  image tower with a new classification head of the task's classes, timm's ``LabelSmoothingCrossEntropy``.

Both use timm's ``create_optimizer_v2`` (AdamW; no weight decay on biases and norms) and ``create_scheduler_v2``
(a linear warmup from 0, then a cosine from the peak over the remaining steps, stepped per update: after the warmup
the same as BioCLIP's and wise-ft's ``cosine_lr``) as wise-ft fine-tunes (mlfoundations/wise-ft @ 58b7a4b,
``src/models/finetune.py``: AdamW, ``cosine_lr`` with 500 warmup steps, weight decay 0.1, 10 epochs). bf16 autocast
on CUDA, fp32 on the CPU. Only the task's training split is seen; its test split stays held out, and what was
trained on (the split, the image ids, each image's SHA-256 and size, the classes and captions) is written beside
the checkpoint so that ``lifebench forgetting`` can name an evaluation task that shares images or classes.

Reproducible and resumable: every random choice is a function of ``(seed, step)`` (the batch order of an epoch,
the text type, the flips, any dropout), and every ``checkpoint_every`` steps the model, optimizer, scheduler,
RNG state and step are written atomically to ``<out>.state.pt``. A run killed at any point and started again with
the same recipe continues from its last checkpoint and ends with the same weights, bit for bit on the same
machine, as one that was never interrupted. The output is a safetensors file (the recipe in its metadata, and in
``<out>.json``) that ``lifebench run`` loads as ``open_clip:<ARCH>@<out>`` or ``timm:<name>@<out>``.

Augmentation is a seeded horizontal flip of the eval transform's crop: BioCLIP's random resized crop (scale 0.9-1)
is left out so that decoding stays a pure function of the file, which a resumed run must repeat exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifebench.errors import ConfigError, DataError
from lifebench.fsutil import atomic_write

__all__ = ["MIXED_TYPES", "FinetuneResult", "Recipe", "file_digests", "finetune", "read_recipe", "recipe_path",
           "state_path"]

log = logging.getLogger(__name__)

MIXED_TYPES = ("sci", "com", "taxon", "sci_com", "taxon_com")
"""The text types BioCLIP draws from per step (``train.py``: ``random.choice([sci, com, taxon, sci_com, taxon_com])``)."""
CAPTION = "a photo of {}."
"""BioCLIP's training captions (``make_wds.py``: ``f"a photo of {taxon.scientific}."`` and so on)."""
OBJECTIVES = {"open_clip": "contrastive", "timm": "classification"}


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the fine-tuned weights (with the data): stored with the checkpoint.

    ``steps`` is the total number of optimizer updates; ``epochs`` how many passes over the training split they
    make (``steps = epochs * steps_per_epoch`` unless ``steps`` was given). ``checkpoint_every`` is kept for the
    record but may change between a run and its resumption: it does not change the weights.
    """

    model: str
    family: str
    arch: str
    objective: str
    task: str
    epochs: int
    steps: int
    steps_per_epoch: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    seed: int
    precision: str
    text_type: str = "mixed"
    label_smoothing: float = 0.1
    opt: str = "adamw"
    sched: str = "cosine"
    checkpoint_every: int = 50

    def key(self) -> str:
        """A hash of the fields that change the weights: a checkpoint resumes only a run of the same key."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "checkpoint_every"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class FinetuneResult:
    """The written checkpoint, the id ``lifebench run`` loads it by, and how the run went."""

    path: Path
    backbone_id: str
    recipe: Recipe
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0
    """The step the run continued from (0: from the start); ``-1``: the checkpoint existed already."""
    seconds: float = 0.0


def recipe_path(out: str | os.PathLike) -> Path:
    """``<out>.json`` beside the checkpoint: the recipe and what was trained on."""
    return Path(out).with_suffix(".json")


def state_path(out: str | os.PathLike) -> Path:
    """``<out>.state.pt``: the last resumable checkpoint of an unfinished run (removed when the run ends)."""
    out = Path(out)
    return out.with_name(out.stem + ".state.pt")


def read_recipe(checkpoint: str | os.PathLike) -> dict | None:
    """The JSON written beside a fine-tuned checkpoint (None when there is none or it is not ours)."""
    path = recipe_path(checkpoint)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "recipe" in data and "trained_on" in data else None


def file_digests(paths: list[str]) -> dict[str, int]:
    """SHA-256 of each file's bytes -> its size: how the leakage guard recognises an image under any name."""
    from lifebench.download import file_digest

    return {file_digest(Path(p)): os.path.getsize(p) for p in paths}


def _check_task(task) -> None:
    if task.kind != "plain":
        raise ConfigError(f"task {task.name!r} is a {task.kind!r} task; fine-tuning needs one label per image and one "
                          "train/test split (give --test-size for a folder that would be cross-fitted)")
    overlap = np.intersect1d(np.asarray(task.train_idx), np.asarray(task.test_idx))
    if overlap.size:
        raise ConfigError(f"task {task.name!r} has {overlap.size} images in both its train and test split; "
                          "fine-tuning must hold the test split out: give a task with disjoint splits")
    if len(set(task.examples.labels[task.train_idx].tolist())) < 2:
        raise ConfigError(f"task {task.name!r} has fewer than two classes in its training split; fine-tuning needs two")


def _step_seed(seed: int, step: int) -> int:
    return int.from_bytes(hashlib.sha256(f"finetune\0{seed}\0{step}".encode()).digest()[:8], "little") >> 1


def _batch(recipe: Recipe, n: int, step: int) -> np.ndarray:
    """The training rows of ``step``: epoch ``step // steps_per_epoch`` shuffles the rows with its own seed."""
    epoch, k = divmod(step, recipe.steps_per_epoch)
    order = np.random.default_rng([recipe.seed, epoch]).permutation(n)
    bs = min(recipe.batch_size, n)
    return order[k * bs:(k + 1) * bs]


def _text_type(recipe: Recipe, step: int) -> str:
    if recipe.text_type != "mixed":
        return recipe.text_type
    return random.Random(step).choice(MIXED_TYPES)  # BioCLIP: random.seed(step); random.choice([...])


class _Images(torch.utils.data.Dataset):
    """Training images through the backbone's eval transform (a pure function of the file)."""

    def __init__(self, paths: list[str], preprocess) -> None:
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from lifebench.images import load_rgb

        return self.preprocess(load_rgb(self.paths[i])), i


def _captions(task, types: tuple[str, ...]) -> dict[str, list[str]]:
    """Per text type, the caption of each class (classes in ``task.classes`` order); fallbacks are logged once."""
    from lifebench.tasks.taxonomy import class_text

    taxa = {}
    for c in task.classes:
        taxon = dict((task.taxonomy or {}).get(c) or {})
        if taxon and not str(taxon.get("common", "")).strip():
            # make_wds.make_txt: a taxon without a common name uses its scientific (else taxonomic) name as the
            # common name, so sci_com is "<sci> with common name <sci>" rather than falling back to "<sci>"
            text, kind = class_text(c, taxon, "sci")
            taxon["common"] = text if kind in ("sci", "taxon") else ""
        taxa[c] = taxon
    out, fell = {}, {}
    for t in types:
        texts = []
        for c in task.classes:
            text, kind = class_text(c, taxa[c], t)
            texts.append(CAPTION.format(text))
            if kind != t:
                fell.setdefault(t, kind)
        out[t] = texts
    if fell:
        log.warning("task %s lacks taxonomy for some text types, which fall back: %s", task.name,
                    ", ".join(f"{t} -> {k}" for t, k in fell.items()))
    return out


def _build(recipe: Recipe, n_classes: int, device: torch.device):
    """The trainable module, its eval transform and (open_clip) tokenizer, from the starting backbone."""
    from lifebench.backbones import load_backbone, seeded

    backbone = load_backbone(recipe.model, seed=recipe.seed)
    module = backbone.module
    tokenizer = None
    if recipe.family == "open_clip":
        import open_clip

        tokenizer = open_clip.get_tokenizer(recipe.arch)
    else:
        with seeded(recipe.seed):
            module.reset_classifier(n_classes)
    module.train()
    for p in module.parameters():
        p.requires_grad_(True)
    return module.to(device), backbone.preprocess, tokenizer


def _optimizer(recipe: Recipe, module: torch.nn.Module):
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    optimizer = create_optimizer_v2(module, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay)
    # warmup_prefix: the cosine starts at the peak lr after the warmup and spans the remaining steps, as BioCLIP's
    # and wise-ft's cosine_lr (e = step - warmup, es = steps - warmup). Without it timm's cosine runs over all
    # the steps from step 0, so the warmup ends below the peak (0.976 lr with a 10% warmup) and it is never reached.
    scheduler, _ = create_scheduler_v2(optimizer, sched=recipe.sched, num_epochs=recipe.steps - recipe.warmup_steps,
                                       warmup_epochs=recipe.warmup_steps, warmup_lr=0.0, warmup_prefix=True,
                                       min_lr=0.0, step_on_epochs=False, updates_per_epoch=1)
    return optimizer, scheduler


def _save_state(path: Path, recipe: Recipe, step: int, module, optimizer, scheduler, losses: list[float]) -> None:
    """Everything a resumed run needs, written atomically (a kill leaves the previous checkpoint whole)."""
    state = {"recipe_key": recipe.key(), "step": step, "model": module.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "losses": list(losses),
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}
    atomic_write(path, lambda f: torch.save(state, f))
    log.info("checkpoint at step %d of %d: %s", step, recipe.steps, path)


def _load_state(path: Path, recipe: Recipe) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a checkpoint written by something else, or damaged outside atomic_write
        raise ConfigError(f"cannot read the resumable checkpoint {path} ({type(err).__name__}); delete it to start "
                          "over") from err
    if state.get("recipe_key") != recipe.key():
        raise ConfigError(f"{path} is a checkpoint of another recipe (model, task, steps, lr, seed, ...); resume with "
                          "the same options, or pass --restart to discard it")
    return state


def _write_output(out: Path, recipe: Recipe, module, trained_on: dict, losses: list[float], seconds: float,
                  backbone_id: str) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    summary = {k: trained_on[k] for k in ("task", "split", "n_train", "classes", "manifest")}
    metadata = {"format": "pt", "lifebench_recipe": json.dumps(dataclasses.asdict(recipe), sort_keys=True),
                "lifebench_trained_on": json.dumps(summary, sort_keys=True)}
    record = {"backbone_id": backbone_id, "recipe": dataclasses.asdict(recipe), "recipe_key": recipe.key(),
              "trained_on": trained_on, "losses": losses, "seconds": round(seconds, 3)}
    # the JSON first: a checkpoint without its record would escape the leakage guard
    atomic_write(recipe_path(out), lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()))
    atomic_write(out, lambda f: f.write(save(tensors, metadata=metadata)))


def make_recipe(model: str, task, *, epochs: int = 10, steps: int | None = None, batch_size: int = 32,
                lr: float = 1e-5, weight_decay: float = 0.1, warmup_steps: int | None = None,
                text_type: str = "mixed", label_smoothing: float = 0.1, seed: int = 0, device: str = "auto",
                checkpoint_every: int = 50) -> Recipe:
    """Validate the options against the model and task and fill in the derived ones (steps, warmup, precision)."""
    from lifebench.backbones import canonical_id, parse_backbone_id
    from lifebench.device import resolve_device
    from lifebench.tasks.taxonomy import TEXT_TYPES

    parsed = parse_backbone_id(model)
    if parsed.family not in OBJECTIVES or parsed.name.startswith(("hf-hub:", "local-dir:")):
        raise ConfigError(f"cannot fine-tune {model!r}: give open_clip:<ARCH>/<TAG>, open_clip:<ARCH>@<checkpoint or "
                          "random> or timm:<name>[@...] (for a hub model such as BioCLIP, download its weights file "
                          "and give open_clip:ViT-B-16@/path/open_clip_pytorch_model.bin)")
    _check_task(task)
    for name, value, low in (("--epochs", epochs, 1), ("--batch-size", batch_size, 2), ("--checkpoint-every",
                             checkpoint_every, 1), ("--steps", steps if steps is not None else 1, 1)):
        if value < low:
            raise ConfigError(f"{name} {value} is below {low}; give a whole number >= {low}")
    if not (math.isfinite(lr) and lr > 0) or not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"--lr {lr} and --weight-decay {weight_decay} must be finite, lr > 0 and weight decay >= 0")
    if text_type != "mixed" and text_type not in TEXT_TYPES:
        raise ConfigError(f"--text-type {text_type!r} is not 'mixed' or one of {', '.join(TEXT_TYPES)}")
    n_train = len(task.train_idx)
    per_epoch = max(1, n_train // min(batch_size, n_train))
    total = steps if steps is not None else epochs * per_epoch
    warmup = min(500, total // 10) if warmup_steps is None else warmup_steps
    if not 0 <= warmup < total:
        raise ConfigError(f"--warmup-steps {warmup} must be at least 0 and below the {total} training steps")
    precision = "bf16" if resolve_device(device).type == "cuda" else "fp32"
    return Recipe(model=canonical_id(model, seed=seed), family=parsed.family, arch=parsed.name,
                  objective=OBJECTIVES[parsed.family], task=task.name, epochs=math.ceil(total / per_epoch),
                  steps=total, steps_per_epoch=per_epoch, batch_size=min(batch_size, n_train), lr=lr,
                  weight_decay=weight_decay, warmup_steps=warmup, seed=seed, precision=precision,
                  text_type=text_type if parsed.family == "open_clip" else "none",
                  label_smoothing=label_smoothing if parsed.family == "timm" else 0.0,
                  checkpoint_every=checkpoint_every)


def finetune(recipe: Recipe, task, out: str | os.PathLike, *, device: str = "auto", num_workers: int = 0,
             show_progress: bool = True, restart: bool = False, split_options: dict | None = None) -> FinetuneResult:
    """Train ``recipe`` on ``task``'s training split and write ``out`` (``.safetensors``); see the module notes.

    An existing ``out`` with the same recipe is returned as it is; ``<out>.state.pt`` of the same recipe is resumed
    (``restart`` discards it). ``split_options`` (the ``test_size`` and ``split_seed`` the task was split with) is
    recorded, so that ``lifebench forgetting`` scores the target on the same held-out split. Returns the
    checkpoint's backbone id for ``lifebench run``.
    """
    from lifebench.device import resolve_device
    from lifebench.progress import progress

    out = Path(out).expanduser().resolve()
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: the fine-tuned checkpoint is a .safetensors file; name it e.g. ft.safetensors")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    backbone_id = f"{recipe.family}:{recipe.arch}@{out}"
    done = read_recipe(out)
    if out.is_file() and done is not None and done.get("recipe_key") == recipe.key() and not restart:
        log.info("%s holds this recipe's fine-tuned weights already; nothing to do", out)
        return FinetuneResult(out, backbone_id, recipe, done.get("losses", []), resumed_from=-1)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    train = task.train
    paths = [str(p) for p in train.paths.tolist()]
    codes = torch.as_tensor(task.encode(train.labels))
    trained_on = {"task": task.name, "split": task.split_source, "n_train": len(paths), "n_test": len(task.test_idx),
                  "manifest": task.manifest_hash(), "classes": list(task.classes), "ids": train.ids.tolist(),
                  "split_options": split_options or {}, "images": file_digests(paths)}
    module, preprocess, tokenizer = _build(recipe, len(task.classes), dev)
    tokens = None
    if recipe.family == "open_clip":
        types = MIXED_TYPES if recipe.text_type == "mixed" else (recipe.text_type,)
        captions = _captions(task, types)
        trained_on["captions"] = captions
        tokens = {t: tokenizer(texts) for t, texts in captions.items()}
    optimizer, scheduler = _optimizer(recipe, module)
    spath = state_path(out)
    state = None if restart else _load_state(spath, recipe)
    start, losses = 0, []
    if state is not None:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, losses = int(state["step"]), list(state["losses"])
        log.info("resuming %s from its checkpoint at step %d of %d", out.name, start, recipe.steps)
    loss_fn = _loss(recipe)
    dataset = _Images(paths, preprocess)
    batches = [_batch(recipe, len(paths), s).tolist() for s in range(start, recipe.steps)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if recipe.precision == "bf16" else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), \
            progress(recipe.steps - start, f"fine-tune {recipe.arch} on {task.name}", unit="step",
                     enabled=show_progress) as bar:
        if state is not None:
            torch.set_rng_state(state["rng"]["torch"])
            random.setstate(state["rng"]["python"])
            if dev.type == "cuda" and state["rng"]["cuda"]:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        for step, (pixels, rows) in zip(range(start, recipe.steps), loader, strict=True):
            torch.manual_seed(_step_seed(recipe.seed, step))  # dropout and the flips: a function of the step
            flip = torch.rand(len(rows)) < 0.5
            pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels).to(dev)
            labels = codes[rows].to(dev)
            scheduler.step_update(step)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                if tokens is not None:
                    texts = tokens[_text_type(recipe, step)][labels.cpu()].to(dev)
                    loss = loss_fn(**_clip_outputs(module(pixels, texts)))
                else:
                    loss = loss_fn(module(pixels), labels)
            if not torch.isfinite(loss):
                raise DataError(f"the loss became {loss.item()} at step {step}; lower --lr (now {recipe.lr:g})")
            loss.backward()
            optimizer.step()
            if tokens is not None and hasattr(module, "logit_scale"):
                with torch.no_grad():
                    module.logit_scale.clamp_(0, math.log(100))  # as open_clip's train_one_epoch
            losses.append(round(float(loss.detach()), 6))
            bar.update(1)
            if (step + 1) % recipe.checkpoint_every == 0 and step + 1 < recipe.steps:
                _save_state(spath, recipe, step + 1, module, optimizer, scheduler, losses)
    seconds = time.perf_counter() - t0
    _write_output(out, recipe, module, trained_on, losses, seconds, backbone_id)
    spath.unlink(missing_ok=True)
    log.info("fine-tuned %s on %d images of %s in %d steps (loss %.4f -> %.4f): %s", recipe.model, len(paths),
             task.name, recipe.steps, losses[0] if losses else math.nan, losses[-1] if losses else math.nan, out)
    return FinetuneResult(out, backbone_id, recipe, losses, resumed_from=start, seconds=seconds)


def _loss(recipe: Recipe):
    if recipe.family == "open_clip":
        from open_clip.loss import ClipLoss

        return ClipLoss()
    from timm.loss import LabelSmoothingCrossEntropy

    return LabelSmoothingCrossEntropy(smoothing=recipe.label_smoothing) if recipe.label_smoothing > 0 else \
        torch.nn.CrossEntropyLoss()


def _clip_outputs(out: Any) -> dict[str, torch.Tensor]:
    """open_clip's forward as ClipLoss's keywords (a dict with ``output_dict``, else a tuple whose fourth item, if
    any, is SigLIP's logit bias)."""
    keys = ("image_features", "text_features", "logit_scale", "logit_bias")
    out = out if isinstance(out, dict) else dict(zip(keys, out, strict=False))
    if out.get("logit_bias") is not None:
        raise ConfigError("SigLIP models train with a sigmoid loss, which lifebench finetune does not run yet; "
                          "fine-tune a CLIP architecture")
    return {k: out[k] for k in keys[:3]}
