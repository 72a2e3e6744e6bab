"""The distillation stage: a teacher (or an ensemble) teaches the XiaoNet-style student.

One readable training loop. Loss per sample and window position:

    alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy(hard labels, student)

where ``x_T`` is a distribution softened by temperature ``T`` (softmax of log-probabilities / T). The teacher's
output comes from the soft-label cache (computed once per trace, cropped with the waveform), so an epoch costs
only the student. Runs as one process, or as several with ``torchrun --nproc_per_node=N -m pipeline distill``
(DistributedDataParallel; gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline import generators
from pipeline.artifacts import atomic_dir, atomic_file, atomic_write_text
from pipeline.config import Config
from pipeline.errors import EdgepickError

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
STUDENT = "student"  # SeisBench model name inside the output folder: student.json + student.pt


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor | None,
    hard_labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Mean over batch and samples of alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(hard, student).

    Tensors are (batch, classes, samples); classes are (P, S, noise).
    """
    loss = student_logits.new_zeros(())
    if alpha > 0:
        teacher_log = torch.log(teacher_probs.float().clamp_min(1e-8))
        teacher_soft = F.softmax(teacher_log / temperature, dim=1)
        student_log_soft = F.log_softmax(student_logits / temperature, dim=1)
        kl = (teacher_soft * (torch.log(teacher_soft.clamp_min(1e-12)) - student_log_soft)).sum(dim=1).mean()
        loss = loss + alpha * temperature**2 * kl
    if alpha < 1:
        cross_entropy = -(hard_labels * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()
        loss = loss + (1 - alpha) * cross_entropy
    return loss


def run(config: Config) -> dict:
    cfg = config.distill
    rank, world, device = _setup_distributed()
    master = rank == 0
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    if cfg.temperature <= 0 or not 0 <= cfg.alpha <= 1:
        raise EdgepickError(f"distill needs temperature > 0 and 0 <= alpha <= 1 (got T={cfg.temperature}, alpha={cfg.alpha})")

    train_set, dev_set = _datasets(config, master)
    from pipeline.student import build_student

    model = build_student(config.student).to(device)
    in_samples = model.in_samples
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    windows_per_epoch = cfg.windows_per_epoch or sum(len(t) for t in train_set)
    steps_per_epoch = max(1, windows_per_epoch // (cfg.batch_size * world))
    total_steps = steps_per_epoch * cfg.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _warmup_cosine(step, total_steps))
    state = {"epoch": 0, "best_dev_loss": math.inf, "bad_epochs": 0, "history": []}
    if cfg.resume:
        state = _load_checkpoint(out / CHECKPOINT, model, optimizer, schedule, state)
    raw_model = model
    trainable = _Logits(model)
    if world > 1:
        trainable = DistributedDataParallel(trainable)

    train_loader = _train_loader(train_set, in_samples, cfg, windows_per_epoch // world, seed=cfg.seed + 1000 * rank + state["epoch"])
    dev_loader = _dev_loader(dev_set, in_samples, cfg)
    if master:
        parameters = sum(p.numel() for p in raw_model.parameters())
        print(f"distill: {parameters} parameters, {raw_model.count_macs() / 1e6:.2f} M MACs/window; "
              f"{sum(map(len, train_set))} training traces, {sum(map(len, dev_set))} dev traces, {steps_per_epoch} steps/epoch, world {world}")

    for epoch in range(state["epoch"], cfg.epochs):
        started = time.time()
        trainable.train()
        train_losses = []
        batches = iter(train_loader)
        for _ in tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not master, leave=False):
            batch = next(batches)
            logits = trainable(batch["X"].to(device))
            loss = distillation_loss(logits, _get(batch, "y_soft", device), _get(batch, "y", device), cfg.temperature, cfg.alpha)
            if not torch.isfinite(loss):
                raise EdgepickError(
                    f"non-finite loss at epoch {epoch + 1}; stopped, the last good checkpoint in {out} is kept "
                    f"(lower distill.learning_rate={cfg.learning_rate} or check the data for NaNs)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            train_losses.append(loss.item())
        dev_loss = _evaluate(raw_model, dev_loader, cfg, device)
        train_loss = _all_mean(float(np.mean(train_losses)), world, device)
        improved = dev_loss < state["best_dev_loss"] - 1e-5
        state["best_dev_loss"] = min(state["best_dev_loss"], dev_loss)
        state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, "train_loss": train_loss, "dev_loss": dev_loss,
                                 "lr": schedule.get_last_lr()[0], "seconds": round(time.time() - started, 1)})
        if master:
            if improved:
                _save_student(raw_model, out)
            _save_checkpoint(out / CHECKPOINT, raw_model, optimizer, schedule, state, config)
            _write_metrics(out, state["history"])
            print(f"epoch {epoch + 1}: train {train_loss:.4f}  dev {dev_loss:.4f}{'  (best, saved)' if improved else ''}"
                  f"  {time.time() - started:.0f} s")
        if state["bad_epochs"] >= cfg.patience:
            if master:
                print(f"early stop: dev loss has not improved for {cfg.patience} epochs")
            break
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return state


def _warmup_cosine(step: int, total_steps: int, warmup: float = 0.05) -> float:
    """Learning-rate factor: linear warm-up over the first 5 % of steps, then cosine decay to 2 %."""
    warmup_steps = max(1, int(warmup * total_steps))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))


class _Logits(torch.nn.Module):
    """The student's pre-softmax output as ``forward``, so DistributedDataParallel syncs its gradients."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, x):
        return self.student.logits(x)


class _Training:
    """One split of one dataset folder, opened for training, with its soft-label cache (or None)."""

    def __init__(self, path: str, dataset, soft_labels):
        self.path, self.dataset, self.soft_labels = path, dataset, soft_labels

    def __len__(self):
        return len(self.dataset)


def _datasets(config: Config, master: bool) -> tuple[list[_Training], list[_Training]]:
    """Train and dev splits of every folder in ``distill.dataset`` (comma-separated: a mixture)."""
    cfg = config.distill
    paths = [p.strip() for p in cfg.dataset.split(",") if p.strip()]
    if not paths:
        raise EdgepickError("distill.dataset is empty")
    opened = {}
    for path in paths:  # cheap checks first: no teacher runs for a request that cannot train
        for split in ("train", "dev"):
            dataset = generators.load_for_training(path, split=split)
            columns = list(generators.phase_columns(dataset))
            if cfg.alpha < 1 and (not columns or dataset.metadata[columns].notna().sum().sum() == 0):
                raise EdgepickError(
                    f"alpha={cfg.alpha} < 1 needs analyst picks, but the {split} split of {path} has none: "
                    "use alpha=1 (teacher only) for unlabelled data"
                )
            opened[path, split] = dataset
    train, dev = [], []
    for path in paths:
        soft = None
        if cfg.alpha > 0:
            from pipeline import teachers

            if config.teacher.mode != "cache":
                raise EdgepickError(f"teacher.mode={config.teacher.mode!r}: distill trains from the soft-label cache only (mode=cache)")
            where = {"cache_dir": config.teacher.cache_dir or None}
            if master:
                teachers.build_soft_labels(path, config.teacher.name, batch_size=config.teacher.batch_size,
                                           device=config.teacher.device or None, **where)
            _barrier()
            soft = teachers.SoftLabelCache.open(path, config.teacher.name, build=False, **where)
        train.append(_Training(path, opened[path, "train"], soft))
        dev.append(_Training(path, opened[path, "dev"], soft))
    return train, dev


def _train_loader(train: list[_Training], in_samples: int, cfg, windows: int, seed: int):
    """Random windows from every training set; traces in which the teacher sees a phase are drawn more often."""
    generator = torch.utils.data.ConcatDataset(
        [generators.training_generator(t.dataset, in_samples, soft_labels=t.soft_labels) for t in train]
    )
    weights = []
    for t in train:
        w = torch.ones(len(t))
        if t.soft_labels is not None and cfg.oversample_phases > 1:
            names = t.dataset.metadata["trace_name"]
            has_phase = torch.tensor([float(t.soft_labels.labels_by_name(n)[:2].max()) > 0.3 for n in names])
            w[has_phase] = cfg.oversample_phases
        weights.append(w / w.sum() * len(t))  # each folder keeps its share of traces
    sampler = torch.utils.data.WeightedRandomSampler(
        torch.cat(weights), num_samples=max(windows, cfg.batch_size), replacement=True,
        generator=torch.Generator().manual_seed(seed),
    )
    return torch.utils.data.DataLoader(
        generator, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers, drop_last=True,
        worker_init_fn=generators._seed_worker, persistent_workers=cfg.workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def _dev_loader(dev: list[_Training], in_samples: int, cfg):
    generator = torch.utils.data.ConcatDataset(
        [generators.evaluation_generator(d.dataset, in_samples, seed=cfg.seed, soft_labels=d.soft_labels) for d in dev]
    )
    return torch.utils.data.DataLoader(generator, batch_size=cfg.batch_size, num_workers=0)


@torch.no_grad()
def _evaluate(model, loader, cfg, device) -> float:
    model.eval()
    losses, counts = 0.0, 0
    for batch in loader:
        logits = model.logits(batch["X"].to(device))
        loss = distillation_loss(logits, _get(batch, "y_soft", device), _get(batch, "y", device), cfg.temperature, cfg.alpha)
        losses += loss.item() * len(logits)
        counts += len(logits)
    return losses / max(counts, 1)


def _get(batch: dict, key: str, device) -> torch.Tensor | None:
    return batch[key].to(device) if key in batch else None


def _save_student(model, out: Path) -> None:
    """The best student so far, as a SeisBench model (student.json + student.pt), replaced atomically."""
    target = out / STUDENT
    with atomic_dir(target) as tmp:
        model.save(tmp / STUDENT)


def _save_checkpoint(path: Path, model, optimizer, schedule, state, config: Config) -> None:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "state": state, "config": config.to_dict(), "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state()}, buffer)
    with atomic_file(path) as handle:
        handle.write(buffer.getvalue())


def _load_checkpoint(path: Path, model, optimizer, schedule, state) -> dict:
    if not path.is_file():
        raise EdgepickError(f"--resume: no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
    except Exception as error:  # a truncated or foreign file fails in many ways inside torch
        raise EdgepickError(f"--resume: checkpoint {path} is corrupt or does not match the student ({type(error).__name__}: {error})") from error
    torch.set_rng_state(checkpoint["torch_rng"])
    np.random.set_state(checkpoint["numpy_rng"])
    print(f"resumed from {path} after epoch {checkpoint['state']['epoch']}")
    return checkpoint["state"]


def _write_metrics(out: Path, history: list[dict]) -> None:
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
    ax.set_ylabel("distillation loss")
    ax.set_title(f"{out.name}: loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(out / "loss.png") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def _setup_distributed() -> tuple[int, int, torch.device]:
    if "RANK" not in os.environ:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return 0, 1, device
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _all_mean(value: float, world: int, device) -> float:
    if world == 1:
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor)
    return tensor.item() / world
