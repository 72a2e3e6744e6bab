"""What every training loop here shares: the learning-rate schedule, atomic checkpoints with resume, the saved
SeisBench model, and the metrics CSV with its loss curve (used by ``distill`` and ``teacher_finetune``)."""

from __future__ import annotations

import csv
import io
import math
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
        raise EdgepickError(f"non-finite loss at epoch {epoch + 1}; stopped, the last good checkpoint in {out} is kept "
                            f"({advice})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    schedule.step()
    return loss.item()


def record_dev_loss(state: dict, dev_loss: float, epoch: int) -> bool:
    """Early-stopping bookkeeping after ``epoch`` (0-based): best dev loss, epochs without improvement, epochs done.
    Returns whether ``dev_loss`` improved on the best by more than 1e-5."""
    improved = dev_loss < state["best_dev_loss"] - 1e-5
    state["best_dev_loss"] = min(state["best_dev_loss"], dev_loss)
    state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
    state["epoch"] = epoch + 1
    return improved


def save_model(model, out: Path, name: str) -> None:
    """``model`` as a SeisBench model in ``out/name/`` (name.json + name.pt), the folder replaced atomically."""
    with atomic_dir(Path(out) / name) as tmp:
        model.save(tmp / name)


def save_checkpoint(path: Path, model, optimizer, schedule, state, config: Config) -> None:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "state": state, "config": config.to_dict(), "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state()}, buffer)
    with atomic_file(path) as handle:
        handle.write(buffer.getvalue())


def load_checkpoint(path: Path, model, optimizer, schedule, what: str = "the model") -> dict:
    """Restore model, optimizer, schedule and RNGs from ``path``; return the loop state. One EdgepickError line if
    the file is missing, corrupt or from another model (``what`` names it in the message)."""
    if not path.is_file():
        raise EdgepickError(f"--resume: no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
    except Exception as error:  # a truncated or foreign file fails in many ways inside torch
        raise EdgepickError(f"--resume: checkpoint {path} is corrupt or does not match {what} ({type(error).__name__}: {error})") from error
    torch.set_rng_state(checkpoint["torch_rng"])
    np.random.set_state(checkpoint["numpy_rng"])
    print(f"resumed from {path} after epoch {checkpoint['state']['epoch']}")
    return checkpoint["state"]


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
