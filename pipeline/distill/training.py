"""What every training loop here shares: the learning-rate schedule, atomic checkpoints with resume, the saved
SeisBench model, and the metrics CSV with its loss curve (used by ``distill`` and ``teacher_finetune``)."""

from __future__ import annotations

import csv
import io
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from pipeline.artifacts import atomic_dir, atomic_file, atomic_write_text
from pipeline.config import Config
from pipeline.errors import EdgepickError

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"


def warmup_cosine(step: int, total_steps: int, warmup: float = 0.05) -> float:
    """Learning-rate factor: linear warm-up over the first 5 % of steps, then cosine decay to 2 %."""
    warmup_steps = max(1, int(warmup * total_steps))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))


def optimizer_step(loss: torch.Tensor, optimizer, schedule, parameters, grad_clip: float, epoch: int, out: Path,
                   advice: str) -> float:
    """One step of every training loop here: a non-finite loss stops the run with one line (``advice``: what to
    change), else backward, gradient clipping at ``grad_clip``, the optimizer and schedule steps. Returns the loss."""
    if not torch.isfinite(loss):
        raise EdgepickError(f"non-finite loss at epoch {epoch + 1}; stopped, {kept(out)} ({advice})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    schedule.step()
    return loss.item()


def non_finite(model_or_state) -> list[str]:
    """Names of the floating-point parameters and buffers (BatchNorm running statistics too) of a model or state
    dict that hold inf or NaN: what must never be saved."""
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    return [name for name, tensor in state.items()
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def check_finite(model, epoch: int, out: Path, advice: str, dev_loss: float | None = None) -> None:
    """Stop the run with one line, before anything of ``epoch`` is saved, if a weight or buffer of ``model`` (or
    the dev loss) is not finite: an epoch that diverged is never kept as the best model nor as the checkpoint."""
    bad = non_finite(model)
    if bad:
        raise EdgepickError(f"non-finite weights after epoch {epoch + 1} ({names(bad)}); stopped, {kept(out)} "
                            f"({advice})")
    if dev_loss is not None and not math.isfinite(dev_loss):
        raise EdgepickError(f"non-finite dev loss after epoch {epoch + 1}; stopped, {kept(out)} ({advice})")


def names(found: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``found``, and how many more."""
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return ", ".join(found[:shown]) + more


def kept(out: Path) -> str:
    """What a diverged run leaves behind: only finite checkpoints are ever written, so the one there is good."""
    if (Path(out) / CHECKPOINT).is_file():
        return f"the last good checkpoint in {out} is kept"
    return f"no checkpoint was saved in {out}"


def _refuse_non_finite(model, path: Path) -> None:
    bad = non_finite(model)
    if bad:
        raise EdgepickError(f"not saving {path}: non-finite values in {names(bad)} (the training diverged)")


def record_dev_loss(state: dict, dev_loss: float, epoch: int) -> bool:
    """Early-stopping bookkeeping after ``epoch`` (0-based): best dev loss, epochs without improvement, epochs done.
    Returns whether ``dev_loss`` improved on the best by more than 1e-5."""
    improved = dev_loss < state["best_dev_loss"] - 1e-5
    state["best_dev_loss"] = min(state["best_dev_loss"], dev_loss)
    state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
    state["epoch"] = epoch + 1
    return improved


def save_model(model, out: Path, name: str) -> None:
    """``model`` as a SeisBench model in ``out/name/`` (name.json + name.pt), the folder replaced atomically; one
    EdgepickError line instead if a weight or buffer is not finite."""
    _refuse_non_finite(model, Path(out) / name)
    with atomic_dir(Path(out) / name) as tmp:
        model.save(tmp / name)


def save_checkpoint(path: Path, model, optimizer, schedule, state, config: Config, hint=None) -> None:
    """Everything a resume needs (with ``hint``, the feature adapter that trains beside the model), written
    atomically; one EdgepickError line instead (the old checkpoint kept) if a weight or buffer of ``model`` is not
    finite."""
    _refuse_non_finite(model, path)
    buffer = io.BytesIO()
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
             "state": state, "config": config.to_dict(), "torch_rng": torch.get_rng_state(),
             "numpy_rng": np.random.get_state()}
    if hint is not None:
        saved["hint"] = hint.state_dict()
    torch.save(saved, buffer)
    with atomic_file(path) as handle:
        handle.write(buffer.getvalue())


_CHECKPOINT_KEYS = ("model", "optimizer", "schedule", "state", "torch_rng", "numpy_rng")
RESUME_REMEDY = "delete it, or run without --resume"


def read_torch_file(path: Path, message: str):
    """``torch.load`` of ``path``, or one EdgepickError line, ``message``, if it is not a valid torch file: a
    truncated file or random bytes fail in many ways inside torch (UnpicklingError, MemoryError with no text, ...).
    Files torch.save writes are zip archives, so anything else is refused before torch tries to unpickle it."""
    if not zipfile.is_zipfile(path):
        raise EdgepickError(message)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001
        raise EdgepickError(message) from error


def read_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path`` as :func:`save_checkpoint` wrote it, or one EdgepickError line: missing, not a
    valid torch file, not a training checkpoint, or holding non-finite weights (as runs before they were refused
    could save)."""
    path = Path(path)
    if not path.is_file():
        raise EdgepickError(f"--resume: no checkpoint at {path}")
    checkpoint = read_torch_file(path, f"--resume: checkpoint {path} is corrupt: not a valid torch checkpoint "
                                       f"(truncated, or not written by torch.save); {RESUME_REMEDY}")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in _CHECKPOINT_KEYS):
        raise EdgepickError(f"--resume: checkpoint {path} is corrupt: a torch file but not a valid training "
                            f"checkpoint (it needs {', '.join(_CHECKPOINT_KEYS)}); {RESUME_REMEDY}")
    bad = non_finite(checkpoint["model"]) if isinstance(checkpoint["model"], dict) else []
    if bad:
        raise EdgepickError(f"--resume: checkpoint {path} holds non-finite weights ({names(bad)}) of a run that "
                            f"diverged; {RESUME_REMEDY}")
    return checkpoint


def restore_checkpoint(checkpoint: dict, path: Path, model, optimizer, schedule, what: str = "the model",
                       hint=None) -> dict:
    """Restore model, optimizer, schedule and RNGs from a :func:`read_checkpoint` result; return the loop state.

    The optimizer keeps the learning rate and weight decay it was built with (the current settings), not the
    checkpoint's: the schedule goes on from the checkpoint's step, at the new rate. One EdgepickError line if the
    checkpoint is from another model (``what`` names it in the message)."""
    base_lrs = list(schedule.base_lrs)  # the configured rates (group["lr"] already holds the schedule's factor)
    decays = [group.get("weight_decay") for group in optimizer.param_groups]
    try:
        model.load_state_dict(checkpoint["model"])
        if hint is not None:
            hint.load_state_dict(checkpoint["hint"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
    except Exception as error:  # a foreign file fails in many ways inside torch
        raise EdgepickError(f"--resume: checkpoint {path} is corrupt or does not match {what} ({type(error).__name__}: {error})") from error
    schedule.base_lrs = base_lrs
    for group, base, decay, factor in zip(optimizer.param_groups, base_lrs, decays, schedule.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * factor(schedule.last_epoch)
        if decay is not None:
            group["weight_decay"] = decay
    schedule._last_lr = [group["lr"] for group in optimizer.param_groups]
    torch.set_rng_state(checkpoint["torch_rng"])
    np.random.set_state(checkpoint["numpy_rng"])
    print(f"resumed from {path} after epoch {checkpoint['state']['epoch']}")
    return checkpoint["state"]


def load_checkpoint(path: Path, model, optimizer, schedule, what: str = "the model") -> dict:
    """Restore model, optimizer, schedule and RNGs from ``path`` (:func:`read_checkpoint`,
    :func:`restore_checkpoint`); return the loop state. A learning rate or weight decay other than the checkpoint's
    is applied, and said in one line."""
    checkpoint = read_checkpoint(path)
    old_lrs = list(checkpoint["schedule"].get("base_lrs", []))
    old_decays = [group.get("weight_decay") for group in checkpoint["optimizer"].get("param_groups", [])]
    state = restore_checkpoint(checkpoint, path, model, optimizer, schedule, what)
    changes = []
    if old_lrs and old_lrs[0] != schedule.base_lrs[0]:
        changes.append(f"learning rate {old_lrs[0]:g} -> {schedule.base_lrs[0]:g}")
    new_decay = optimizer.param_groups[0].get("weight_decay")
    if old_decays and old_decays[0] is not None and new_decay is not None and old_decays[0] != new_decay:
        changes.append(f"weight decay {old_decays[0]:g} -> {new_decay:g}")
    if changes:
        print(f"resume: settings changed since the checkpoint, applied: {', '.join(changes)}")
    return state


def write_metrics(out: Path, history: list[dict], ylabel: str = "loss") -> None:
    """``out/metrics.csv`` (one row per epoch) and ``out/loss.png`` (train and dev loss), both written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(out / METRICS, text.getvalue())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax.plot(epochs, [h["dev_loss"] for h in history], "s-", label="dev")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{out.name}: loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(out / "loss.png") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
