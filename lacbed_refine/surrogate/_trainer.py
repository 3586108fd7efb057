"""Training: the :class:`Trainer` (optimizers, EMA, schedule, checkpoints, resumption) and the
checkpoint format.

Checkpoint (a dict saved with ``torch.save``, loaded with ``weights_only=True``)::

    format          "lacbed-refine-surrogate"
    format_version  1
    version         lacbed_refine.__version__ that wrote it
    kind            "forward" | "inverse"
    arch            "cgan" | "vae"
    config          {"task": {...}, "generator": {...}, ... , "train": {...}}  (asdict of each)
    step, wall_time_s
    model           state_dict of the whole model (generator and discriminators)
    ema             state_dict of the EMA generator, or None
    optim           {group: optimizer state_dict}
    history         [{"step", "epoch", "time_s", <mean losses>}, ..., {"epoch", "val_R", ...}]
    metadata        free-form JSON-able dict (data file and hash, command line)

Determinism: the data order of epoch e is a permutation seeded by (seed, e), and every step seeds
torch's global generator with (seed, step) before the model draws its augmentations, so a run that
is stopped and resumed gives the same weights as one that is not (on the same device and threads).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from lacbed_refine.version import __version__
from lacbed_refine import metrics
from lacbed_refine.io.files import atomic_path
from lacbed_refine.surrogate._config import ARCHITECTURES, DIRECTIONS, TrainConfig, config_from_dict
from lacbed_refine.surrogate._models import CGAN, VAE, SurrogateModel

__all__ = [
    "Trainer",
    "EpochBatchSampler",
    "make_loader",
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    "build_model",
    "CHECKPOINT_FORMAT",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "lacbed-refine-surrogate"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used; the message names the file."""


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (readers never see a half-written file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path, *, map_location="cpu") -> dict:
    """Read a surrogate checkpoint or shipped weights file with ``weights_only=True``.

    Every floating tensor of its weights (``model`` and ``ema``) must be finite: a run that diverged
    leaves NaN weights, which would otherwise give NaN predictions without a word.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        One line naming the file: unreadable, truncated, holding objects that are not plain data
        (never loaded), not a dict, not a lacbed-refine surrogate (or of a newer format), or with
        NaN or infinite weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, IndexError, … for bad files
        raise CheckpointError(_load_failure(path, exc)) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a lacbed-refine surrogate checkpoint (no format {CHECKPOINT_FORMAT!r})")
    try:
        version = int(state.get("format_version", 0))
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: checkpoint format_version {state.get('format_version')!r} is not a number") from None
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state['format_version']} is newer than this "
                              f"lacbed-refine ({__version__}) reads ({CHECKPOINT_VERSION}); upgrade the package")
    for key in ("kind", "arch", "config"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    if state["kind"] not in DIRECTIONS or state["arch"] not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown model kind/arch {state['kind']!r}/{state['arch']!r}")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: checkpoint config is a {type(state['config']).__name__}, not a dict")
    for key in ("model", "ema"):
        weights = state.get(key)
        if weights is None:
            continue
        if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise CheckpointError(f"{path}: checkpoint {key!r} is not a state dict of tensors")
        bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            more = f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else ""
            raise CheckpointError(f"{path}: the {'EMA ' if key == 'ema' else ''}weights hold NaN or infinite values "
                                  f"({bad[0]}{more}); the training diverged: retrain (e.g. with a lower --lr) "
                                  f"or use an earlier checkpoint")
    return state


def _load_failure(path: Path, exc: BaseException) -> str:
    """One line on why ``torch.load(path, weights_only=True)`` failed.

    torch's own message for a file holding Python objects advises loading it with
    ``weights_only=False``, which would run whatever code a hostile file carries: it is never
    repeated, and only the name of the refused object is kept from it.
    """
    import pickle
    import re

    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"{path}: refused: it holds Python objects{what}, not only tensors and plain data; a lacbed-refine "
                f"checkpoint never does, so the file is corrupt or not a surrogate checkpoint")
    if isinstance(exc, EOFError) or not text.strip():
        return f"{path}: not a readable checkpoint (corrupt or truncated?): the file ends early or is empty"
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text.strip().splitlines()[0])
    # the unpickler's internal errors (IndexError: pop from empty list, ...) say nothing to a user
    detail = f": {first}" if isinstance(exc, (RuntimeError, OSError, ValueError)) and "weights_only" not in first else ""
    return f"{path}: not a readable checkpoint (corrupt, truncated, or not a torch file){detail}"


def build_model(arch: str, config: dict) -> SurrogateModel:
    """A fresh model from ``arch`` and the component config dicts (a checkpoint's ``config``; a
    missing section takes its defaults, the ``train`` section is ignored)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    task = config_from_dict("task", config.get("task", {}))
    if arch == "cgan":
        return CGAN(task, generator=config_from_dict("generator", config.get("generator", {})),
                    discriminator=config_from_dict("discriminator", config.get("discriminator", {})),
                    loss=config_from_dict("loss", config.get("loss", {})))
    return VAE(task, vae=config_from_dict("vae", config.get("vae", {})))


class EpochBatchSampler(Sampler):
    """Batches of a seeded permutation per epoch; :meth:`set_epoch` can skip the batches a resumed
    run has already done.

    Parameters
    ----------
    n : int
        Dataset length.
    batch_size : int
    seed : int
    shuffle : bool
        False keeps the dataset order (evaluation).
    drop_last : bool
        Drop the last incomplete batch.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, shuffle: bool = True, drop_last: bool = True):
        if n < 1:
            raise ValueError("the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.drop_last = drop_last and n >= batch_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use the order of ``epoch`` and begin at batch ``start``."""
        self.epoch, self.start = int(epoch), int(start)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for i in range(self.start, len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size]


def make_loader(dataset, *, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                num_workers: int = 0) -> DataLoader:
    """A DataLoader with an :class:`EpochBatchSampler`, which the :class:`Trainer` drives for
    deterministic, resumable data order."""
    sampler = EpochBatchSampler(len(dataset), batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers)


def _step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7919 + 12345) % (2**63 - 1)


class Trainer:
    """Owns the optimizers (one Adam per parameter group), the generator EMA, the learning-rate
    schedule and the checkpoints.

    Parameters
    ----------
    model : SurrogateModel
        ``model(batch)`` returns a dict of losses with one total per parameter group.
    loader : DataLoader
        Training batches; with an :class:`EpochBatchSampler` (see :func:`make_loader`) the data order
        is deterministic and resumable.
    cfg : TrainConfig
    checkpoint : str or Path, optional
        Where checkpoints are written (every ``cfg.checkpoint_minutes`` and at the end).
    val_loader : DataLoader, optional
        Evaluated with the EMA generator at the end of each epoch (mean R, ℓMSE).
    metadata : dict, optional
        Stored in the checkpoint (data file, hash, command line).
    progress : bool
        Show a tqdm progress bar.
    """

    def __init__(self, model: SurrogateModel, loader: DataLoader, cfg: TrainConfig, *, checkpoint=None,
                 val_loader: DataLoader | None = None, metadata: dict | None = None, progress: bool = True):
        self.model, self.loader, self.cfg = model, loader, cfg
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.val_loader, self.metadata, self.progress = val_loader, dict(metadata or {}), progress
        self.groups = model.parameter_groups()
        self.optims = {k: torch.optim.Adam(v, lr=cfg.lr, betas=tuple(cfg.betas)) for k, v in self.groups.items()}
        self.ema = copy.deepcopy(model.generator).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
        self.step = 0
        self.wall_time_s = 0.0
        self.history: list[dict] = []
        if len(loader) == 0:
            raise ValueError("the training loader yields no batches (dataset smaller than one batch?)")

    # -- state ------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def state_dict(self) -> dict:
        config = self.model.configs()
        config["train"] = asdict(self.cfg)
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "version": __version__,
            "kind": self.model.task.direction,
            "arch": self.model.arch,
            "config": config,
            "step": self.step,
            "wall_time_s": self.wall_time_s,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optim": {k: o.state_dict() for k, o in self.optims.items()},
            "history": self.history,
            "metadata": self.metadata,
        }

    def load_state_dict(self, state: dict, *, source: str = "checkpoint") -> None:
        """Restore model, EMA, optimizers, step and history from a checkpoint dict."""
        if state["kind"] != self.model.task.direction or state["arch"] != self.model.arch:
            raise CheckpointError(f"{source}: holds a {state['kind']} {state['arch']} model, not a "
                                  f"{self.model.task.direction} {self.model.arch}")
        mine = self.model.configs()
        theirs = {k: v for k, v in state["config"].items() if k != "train"}
        if _plain(mine) != _plain(theirs):
            raise CheckpointError(f"{source}: was trained with other model settings ({_diff(theirs, mine)})")
        try:
            self.model.load_state_dict(state["model"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            for k, o in self.optims.items():
                o.load_state_dict(state["optim"][k])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{source}: weights do not fit the model ({str(exc).splitlines()[0]})") from None
        self.step = int(state["step"])
        self.wall_time_s = float(state.get("wall_time_s", 0.0))
        self.history = list(state.get("history", []))
        self.metadata = {**state.get("metadata", {}), **self.metadata}

    def save(self, path=None) -> Path:
        """Write the checkpoint (to ``path`` or the configured one)."""
        path = Path(path) if path is not None else self.checkpoint
        if path is None:
            raise ValueError("no checkpoint path: pass one to Trainer(checkpoint=...) or save(path)")
        return save_checkpoint(path, self.state_dict())

    def resume(self, path=None) -> None:
        """Continue from the checkpoint at ``path`` (default: the configured one)."""
        path = Path(path) if path is not None else self.checkpoint
        if path is None:
            raise ValueError("no checkpoint to resume from")
        self.load_state_dict(load_checkpoint(path), source=str(path))
        log.info("resumed %s at step %d (epoch %d)", path, self.step, self.epoch)

    # -- training ---------------------------------------------------------------------------
    def _total_steps(self) -> int | None:
        ends = []
        if self.cfg.max_steps is not None:
            ends.append(self.cfg.max_steps)
        if self.cfg.epochs is not None:
            ends.append(self.cfg.epochs * self.steps_per_epoch)
        return min(ends) if ends else None

    def _lr(self) -> float:
        if self.cfg.epochs is None:
            return self.cfg.lr
        total = self.cfg.epochs * self.steps_per_epoch
        start = self.cfg.decay_from * total
        if self.step < start:
            return self.cfg.lr
        return self.cfg.lr * max(0.0, (total - self.step) / max(total - start, 1.0))

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.generator.parameters()):
                e.lerp_(p, 1 - decay)
            for e, b in zip(self.ema.buffers(), self.model.generator.buffers()):
                e.copy_(b)

    def train_step(self, batch: dict) -> dict[str, float]:
        """One optimisation step on ``batch``; returns the losses as floats."""
        self.model.train()
        torch.manual_seed(_step_seed(self.cfg.seed, self.step))
        losses = self.model(batch)
        lr = self._lr()
        names = list(self.groups)
        for o in self.optims.values():
            o.zero_grad(set_to_none=True)
        for i, name in enumerate(names):
            total = losses[name]
            if not torch.isfinite(total):
                raise FloatingPointError(f"step {self.step}: loss {name!r} is {float(total)}; lower the learning rate")
            torch.autograd.backward(total, inputs=self.groups[name], retain_graph=i < len(names) - 1)
        for name in names:
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.groups[name], self.cfg.grad_clip)
            for pg in self.optims[name].param_groups:
                pg["lr"] = lr
            self.optims[name].step()
        self.step += 1
        self._update_ema()
        return {k: float(v.detach()) for k, v in losses.items()}

    def _done(self, started: float) -> bool:
        total = self._total_steps()
        if total is not None and self.step >= total:
            return True
        return self.cfg.minutes is not None and time.perf_counter() - started >= 60 * self.cfg.minutes

    def fit(self) -> dict:
        """Train until the configured epochs, steps or minutes are used up, writing checkpoints.

        Returns
        -------
        dict with ``step``, ``epoch``, ``wall_time_s`` (all runs together), ``seconds`` (this run),
        ``last`` (mean losses of the last logging window) and ``checkpoint``.
        """
        started = time.perf_counter()
        last_save = started
        wall0 = self.wall_time_s
        window: dict[str, list[float]] = {}
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self._total_steps(), initial=self.step, unit="step", desc=f"train {self.model.task.direction} {self.model.arch}")
        sampler = getattr(self.loader, "batch_sampler", None)
        last: dict[str, float] = {}
        try:
            while not self._done(started):
                epoch, start = divmod(self.step, self.steps_per_epoch)
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch, start)
                for batch in self.loader:
                    losses = self.train_step(batch)
                    for k, v in losses.items():
                        window.setdefault(k, []).append(v)
                    self.wall_time_s = wall0 + time.perf_counter() - started
                    if self.step % self.cfg.log_every == 0:
                        last = {k: sum(v) / len(v) for k, v in window.items()}
                        self.history.append({"step": self.step, "epoch": self.step / self.steps_per_epoch,
                                             "time_s": round(self.wall_time_s, 2), **last})
                        window = {}
                        log.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items() if k in ("g", "d", "1-r", "Z")})
                    if self.checkpoint is not None and time.perf_counter() - last_save >= 60 * self.cfg.checkpoint_minutes:
                        self.save()
                        last_save = time.perf_counter()
                    if self._done(started):
                        break
                    if self.step % self.steps_per_epoch == 0:
                        break
                if self.step % self.steps_per_epoch == 0 and self.val_loader is not None:
                    self.history.append({"epoch": self.epoch, "step": self.step, **self.validate()})
        except KeyboardInterrupt:
            if self.checkpoint is not None:
                self.save()
                log.warning("interrupted at step %d; checkpoint written to %s (continue with --resume)", self.step, self.checkpoint)
            raise
        finally:
            if bar is not None:
                bar.close()
        if window:
            last = {k: sum(v) / len(v) for k, v in window.items()}
        if self.checkpoint is not None:
            self.save()
        return {"step": self.step, "epoch": self.step / self.steps_per_epoch, "wall_time_s": self.wall_time_s,
                "seconds": time.perf_counter() - started, "last": last,
                "checkpoint": str(self.checkpoint) if self.checkpoint is not None else None}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean R and ℓMSE of the (EMA) generator on the validation loader (origin-insensitive R
        for the inverse map)."""
        from lacbed_refine.surrogate._models import generator_predict

        gen = self.ema if self.ema is not None else self.model.generator
        rs, ls = [], []
        self.model.eval()
        for batch in self.val_loader:
            p = self.model.prepare(batch, augment=False)
            pred = generator_predict(gen, self.model.arch, p["x"], p["cond"])["normalised"]
            y = p["y"][:, 0]
            if self.model.task.direction == "inverse":
                r, _ = metrics.best_shift_r(y, pred)
                ls.append(metrics.best_shift_lmse(y, pred))
            else:
                r = metrics.pearson_r(pred, y)
                ls.append(metrics.lmse(pred, y))
            rs.append(0.5 + 0.5 * r)
        self.model.train()
        return {"val_R": float(torch.cat(rs).mean()), "val_lmse": float(torch.cat(ls).mean())}


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _diff(a: dict, b: dict) -> str:
    out = []
    for sec in sorted(set(a) | set(b)):
        da, db = _plain(a.get(sec, {})), _plain(b.get(sec, {}))
        for k in sorted(set(da) | set(db)):
            if da.get(k) != db.get(k):
                out.append(f"{sec}.{k}: checkpoint {da.get(k)!r}, now {db.get(k)!r}")
    return "; ".join(out[:4]) or "same values, different sections"
