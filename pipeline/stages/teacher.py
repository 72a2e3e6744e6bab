"""``make teacher``: fine-tune a pretrained teacher on a labelled dataset (how the Oklahoma teacher itself was made).

The teacher is trained on its own input conventions, the ones it is applied with (:class:`pipeline.model.teachers.Teacher`):
its component order and filter (``TeacherInput.prepare`` on the whole trace), windows of its own length around the
picks, its own normalisation (the model's ``annotate_batch_pre``, exactly what ``annotate`` runs), and SeisBench's
``ProbabilisticLabeller`` (Gaussian pick labels). Loss: PhaseNet (a softmax over P, S, noise): cross-entropy against
the labels; EQTransformer (three sigmoids: detection, P, S): binary cross-entropy of each, the detection against
SeisBench's ``DetectionLabeller`` (P to S + 1.4 (S - P)), weighted 0.05 / 0.40 / 0.55 as in Mousavi et al. (2020,
Nature Communications 11, 3952), how it was trained. AdamW with warm-up and cosine decay, early stopping on the
dev loss, a checkpoint every epoch written atomically (``teacher.finetune.resume=true`` continues), ``metrics.csv``
and ``loss.png``.

The dev loss of the pretrained weights is measured first and is the bar to beat: the saved model
(``<out>/teacher/teacher.{json,pt}``, a SeisBench model) is the best on dev of the pretrained and every epoch.
Use it as a teacher with ``TEACHER=phasenet:<out>`` or ``eqtransformer:<out>`` (a local folder is a weights name, see
``pipeline.model.teachers``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.data import generators, windowing
from pipeline.distill import training
from pipeline.model import teachers
from pipeline.artifacts import save_config
from pipeline.config import Config
from pipeline.errors import EdgepickError

NAME = "teacher"  # SeisBench model name inside the output folder: teacher/teacher.json + teacher.pt
EQT_LOSS_WEIGHTS = (0.05, 0.40, 0.55)  # detection, P, S: Mousavi et al. (2020)


def cross_entropy(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over batch and samples of -sum_c labels * log(probabilities); both (batch, classes, samples)."""
    return -(labels * torch.log(probabilities.clamp_min(1e-8))).sum(dim=1).mean()


def eqtransformer_loss(outputs, labels: torch.Tensor, detections: torch.Tensor) -> torch.Tensor:
    """EQTransformer's training loss: weighted binary cross-entropy of its (detection, P, S) sigmoids, each
    (batch, samples), against the detection boxcar (batch, 1, samples) and the P, S pick labels (batch, 3, samples)."""
    detection, p, s = outputs
    targets = (detections[:, 0], labels[:, 0], labels[:, 1])
    return sum(w * F.binary_cross_entropy(out.clamp(1e-7, 1 - 1e-7), target)
               for w, out, target in zip(EQT_LOSS_WEIGHTS, (detection, p, s), targets))


def is_sigmoid_picker(teacher: teachers.Teacher) -> bool:
    """EQTransformer-like: (Detection, P, S) sigmoid outputs rather than a softmax over P, S, noise."""
    return list(teacher.labels) == ["Detection", "P", "S"]


def loss_of(teacher: teachers.Teacher, batch: dict, device) -> torch.Tensor:
    """The teacher's own training loss on one batch."""
    outputs = _forward(teacher, batch["X"].to(device))
    if is_sigmoid_picker(teacher):
        return eqtransformer_loss(outputs, batch["y"].to(device), batch["detections"].to(device))
    return cross_entropy(outputs, batch["y"].to(device))


def run(config: Config) -> dict:
    cfg = config.teacher.finetune
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device(config.teacher.device or "cpu")

    teacher = _base_teacher(cfg.base or config.teacher.name)
    model = teacher.model.to(device)
    train_set, dev_set = _datasets(cfg.dataset, teacher)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    windows_per_epoch = cfg.windows_per_epoch or len(train_set)
    steps_per_epoch = max(1, windows_per_epoch // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: training.warmup_cosine(step, total_steps))
    train_loader = _loader(train_set, teacher, cfg, train=True)
    dev_loader = _loader(dev_set, teacher, cfg, train=False)

    if cfg.resume:
        state = training.load_checkpoint(out / training.CHECKPOINT, model, optimizer, schedule, f"teacher {teacher.member.spec}")
    else:  # the pretrained weights are the bar: saved now, replaced only by a better epoch
        initial = _evaluate(teacher, dev_loader, device)
        state = {"epoch": 0, "initial_dev_loss": initial, "best_dev_loss": initial, "bad_epochs": 0, "history": []}
        training.save_model(model, out, NAME)
    save_config(out, config)
    print(f"teacher: fine-tuning {teacher.member.spec} ({sum(p.numel() for p in model.parameters())} parameters) on "
          f"{cfg.dataset}: {len(train_set)} training traces, {len(dev_set)} dev traces, {steps_per_epoch} steps/epoch; "
          f"dev loss of the pretrained weights {state['initial_dev_loss']:.4f}")

    batches = iter(train_loader)
    for epoch in range(state["epoch"], cfg.epochs):
        started = time.time()
        model.train()
        losses = []
        for _ in tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False):
            batch, batches = _next(batches, train_loader)
            loss = loss_of(teacher, batch, device)
            losses.append(training.optimizer_step(loss, optimizer, schedule, model.parameters(), cfg.grad_clip, epoch,
                                                  out, f"lower teacher.finetune.learning_rate={cfg.learning_rate}"))
        dev_loss = _evaluate(teacher, dev_loader, device)
        improved = training.record_dev_loss(state, dev_loss, epoch)
        state["history"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "dev_loss": dev_loss,
                                 "lr": schedule.get_last_lr()[0], "seconds": round(time.time() - started, 1)})
        if improved:
            training.save_model(model, out, NAME)
        training.save_checkpoint(out / training.CHECKPOINT, model, optimizer, schedule, state, config)
        training.write_metrics(out, state["history"], "weighted binary cross-entropy" if is_sigmoid_picker(teacher) else "cross-entropy")
        print(f"epoch {epoch + 1}: train {state['history'][-1]['train_loss']:.4f}  dev {dev_loss:.4f}"
              f"{'  (best, saved)' if improved else ''}  {time.time() - started:.0f} s")
        if state["bad_epochs"] >= cfg.patience:
            print(f"early stop: dev loss has not improved for {cfg.patience} epochs")
            break
    print(f"teacher: best dev loss {state['best_dev_loss']:.4f} (pretrained {state['initial_dev_loss']:.4f}); "
          f"saved in {out / NAME}; use it as TEACHER={teacher.member.model}:{out}")
    return state


def _base_teacher(spec: str) -> teachers.Teacher:
    members = teachers.parse_teacher_spec(spec)
    if len(members) != 1:
        raise EdgepickError(f"make teacher fine-tunes one teacher, not the ensemble {spec!r} (set teacher.finetune.base)")
    teacher = teachers.Teacher(members[0])
    if not ("N" in teacher.labels or is_sigmoid_picker(teacher)):
        raise EdgepickError(f"make teacher fine-tunes PhaseNet-like (P, S, noise softmax) and EQTransformer-like "
                            f"(Detection, P, S sigmoids) pickers; {spec} outputs {list(teacher.labels)}")
    return teacher


def _datasets(path: str, teacher: teachers.Teacher):
    """Train and dev splits of ``path``, with their picks; one EdgepickError line where there are none."""
    splits = []
    for split in ("train", "dev"):
        dataset = generators.load_for_training(path, split=split)
        columns = list(generators.phase_columns(dataset))
        if not columns or dataset.metadata[columns].notna().sum().sum() == 0:
            raise EdgepickError(f"make teacher needs analyst picks (trace_p_arrival_sample / trace_s_arrival_sample), "
                                f"but the {split} split of {path} has none")
        splits.append(dataset)
    teacher.check_data(100.0, "ZNE")  # what load_for_training opens every folder as
    return splits


def _loader(dataset, teacher: teachers.Teacher, cfg, train: bool):
    """Windows of the teacher's length (random around the picks for training, fixed for dev) and the model's labels."""
    import seisbench.generate as sbg

    columns = generators.phase_columns(dataset)
    n = teacher.in_samples
    if is_sigmoid_picker(teacher):
        p_columns = [c for c, phase in columns.items() if phase == "P"]
        s_columns = [c for c, phase in columns.items() if phase == "S"]
        labels = [sbg.ProbabilisticLabeller(label_columns=columns, model_labels="PSN", sigma=cfg.sigma, dim=0),
                  sbg.DetectionLabeller(p_columns, s_columns, key=("X", "detections"), dim=0)]
        as_float = generators.float32("X", "y", "detections")
    else:
        labels = [sbg.ProbabilisticLabeller(label_columns=columns, model_labels=teacher.labels, sigma=cfg.sigma, dim=0)]
        as_float = generators.float32("X", "y")
    if train:
        generator = sbg.GenericGenerator(dataset)
        window = windowing.random_window_around_picks(columns, n)
    else:
        generator = sbg.SteeredGenerator(dataset, generators.evaluation_windows(dataset, n, seed=cfg.seed))
        window = [sbg.SteeredWindow(windowlen=n, strategy="pad")]
    generator.add_augmentations([generators.AsTeacherSees(teacher.input)] + window + labels + as_float)
    workers = generators.worker_count(cfg.workers) if train else 0
    return torch.utils.data.DataLoader(
        generator, batch_size=cfg.batch_size, shuffle=train, num_workers=workers, drop_last=train,
        worker_init_fn=generators._seed_worker, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def _forward(teacher: teachers.Teacher, x: torch.Tensor):
    """The model's output on windows normalised by its own annotate_batch_pre: (batch, classes, samples)
    probabilities (PhaseNet), or a (detection, P, S) tuple of (batch, samples) sigmoids (EQTransformer)."""
    model = teacher.model
    pre = model.annotate_batch_pre(x, argdict=teacher.argdict)
    if isinstance(pre, tuple):
        pre = pre[0]
    return model(pre)


def _next(batches, loader):
    """The next batch, starting the loader over when an epoch's steps outlast one pass over the traces."""
    try:
        return next(batches), batches
    except StopIteration:
        batches = iter(loader)
        return next(batches), batches


@torch.no_grad()
def _evaluate(teacher: teachers.Teacher, loader, device) -> float:
    teacher.model.eval()
    total, count = 0.0, 0
    for batch in loader:
        loss = loss_of(teacher, batch, device)
        total += loss.item() * len(batch["X"])
        count += len(batch["X"])
    return total / max(count, 1) if count else math.nan
