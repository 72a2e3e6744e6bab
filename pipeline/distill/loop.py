"""The distillation run behind ``make distill``, ``make qat`` and ``make sweep``: a teacher (or an ensemble) teaches
the XiaoNet-style student.

One readable training loop (:func:`distill`). Loss per sample and window position:

    alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy(hard labels, student)

where ``x_T`` is a distribution softened by temperature ``T`` (softmax of log-probabilities / T). The teacher's
output comes from the soft-label cache (computed once per trace, cropped with the waveform), so an epoch costs
only the student; with ``teacher.mode=on-the-fly`` the teacher runs on every batch instead (on ``teacher.device``),
on each window's whole-trace context, and gives the same target as the cache. Runs as one process, or as several
with ``torchrun --nproc_per_node=N -m pipeline distill``
(DistributedDataParallel; gloo on CPU, nccl on GPU). The loss is :mod:`pipeline.distill.losses`.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline.data import generators
from pipeline.distill import features, losses, soft_labels, training
from pipeline.artifacts import save_config
from pipeline.config import Config
from pipeline.errors import EdgepickError
from pipeline.distill.fake_quant import QuantizationAware
from pipeline.model import streaming
from pipeline.distill.losses import check_phase_weight_source, distillation_loss
from pipeline.model.student import build_student, load_student, window_padding
from pipeline.distill.training import CHECKPOINT, METRICS  # noqa: F401  (the names of distill's output files)

STUDENT = "student"  # SeisBench model name inside the output folder: student.json + student.pt


def distill(config: Config) -> dict:
    """Distil ``config.teacher`` into the student of ``config.student`` on ``distill.dataset`` (``distill.out``); the
    training state (epochs, losses)."""
    cfg = config.distill
    rank, world, device = _setup_distributed()
    master = rank == 0
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    workers = generators.worker_count(cfg.workers)  # a bad count fails before any soft labels are built
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    if cfg.temperature <= 0 or not 0 <= cfg.alpha <= 1 or not cfg.phase_weight >= 0 or not 0 <= cfg.live_windows <= 1:
        raise EdgepickError(f"distill needs temperature > 0, 0 <= alpha <= 1, phase_weight >= 0 and 0 <= live_windows <= 1 "
                            f"(got T={cfg.temperature}, alpha={cfg.alpha}, phase_weight={cfg.phase_weight}, "
                            f"live_windows={cfg.live_windows})")
    if not cfg.oversample_near_field >= 1 or not cfg.near_field_s > 0:
        raise EdgepickError(f"distill.oversample_near_field must be >= 1 and distill.near_field_s > 0, got "
                            f"{cfg.oversample_near_field} and {cfg.near_field_s}")
    if not cfg.s_quiet_weight >= 0 or not 0 < cfg.s_quiet_below < 1:
        raise EdgepickError(f"distill.s_quiet_weight must be >= 0 and distill.s_quiet_below in (0, 1), got "
                            f"{cfg.s_quiet_weight} and {cfg.s_quiet_below}")
    if cfg.peak_shape < 0 or not cfg.peak_shape_power >= 1:
        raise EdgepickError(f"distill.peak_shape must be >= 0 and distill.peak_shape_power >= 1, got "
                            f"{cfg.peak_shape} and {cfg.peak_shape_power}")
    if not 0 <= cfg.gap_resume <= 1 or (cfg.gap_resume > 0 and (cfg.alpha == 0 or config.teacher.mode != "cache")):
        raise EdgepickError(f"distill.gap_resume must lie in [0, 1] and needs the teacher's cached targets "
                            f"(alpha > 0, teacher.mode=cache); got {cfg.gap_resume} (alpha={cfg.alpha}, "
                            f"teacher.mode={config.teacher.mode})")
    check_phase_weight_source(cfg.phase_weight_source)  # before anything is written, not at the first batch
    for name in ("feature_weight", "shift_consistency"):
        if not getattr(cfg, name) >= 0:
            raise EdgepickError(f"distill.{name} must be >= 0, got {getattr(cfg, name)}")
    checkpoint = None
    if cfg.resume:  # read and compared first: a checkpoint that cannot go on fails before any teacher runs
        checkpoint = training.read_checkpoint(out / CHECKPOINT)
        changed = _resume_changes(checkpoint.get("config"), config, out / CHECKPOINT)
        if changed and master:
            print(f"resume: settings changed since the checkpoint, applied: {', '.join(changed)}")

    train_set, dev_set, targets = _datasets(config, master)
    model = build_student(config.student).to(device)
    if cfg.init_from:
        model.load_state_dict(_load_student_weights(cfg.init_from, model))
    if cfg.quantization_aware:
        QuantizationAware(model)  # hooks on the model; its state_dict stays the float student's
    in_samples = model.in_samples
    _record_live_rule(model, config.live)
    trainable, teacher_features = _Logits(model), None
    if cfg.feature_weight > 0:  # FitNets: the adapter trains with the student, the saved student is the plain network
        if model.causal:
            raise EdgepickError("distill.feature_weight is for a whole-window student: a causal one's features are "
                                "output_delay late and see no future, the teacher's do")
        teacher_features = features.TeacherFeatures(config.teacher.name, in_samples, device)
        trainable = _Logits(model, features.StudentHint(model.channels[0], teacher_features.channels).to(device))
    hint = trainable.hint
    if cfg.shift_consistency > 0 and not model.causal:
        raise EdgepickError("distill.shift_consistency is for a causal student (student.causal=true): a whole-window "
                            "student has no block grid in a stream")
    # the shifted window's first samples, whose causal reach runs into its zero padding (_shift_term leaves them out)
    shift_skip = streaming.causal_reach(model.refine_blocks, antialias=model.antialias) if model.causal else 0
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    windows_per_epoch = cfg.windows_per_epoch or sum(len(t) for t in train_set)
    steps_per_epoch = max(1, windows_per_epoch // (cfg.batch_size * world))
    total_steps = steps_per_epoch * cfg.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: training.warmup_cosine(step, total_steps))
    state = {"epoch": 0, "best_dev_loss": math.inf, "bad_epochs": 0, "history": []}
    if checkpoint is not None:
        state = training.restore_checkpoint(checkpoint, out / CHECKPOINT, model, optimizer, schedule, "the student",
                                            hint)
        if state["epoch"] >= cfg.epochs:  # nothing would train: say so rather than rewrite the folder's settings
            raise EdgepickError(f"--resume: {out / CHECKPOINT} has run {state['epoch']} epochs, the run is set to "
                                f"{cfg.epochs}: nothing to train; raise the epochs to go on")
        np.random.seed((cfg.seed, rank, state["epoch"]))  # windows and noise go on, not replay epoch 1's
    raw_model = model
    if world > 1:
        trainable = DistributedDataParallel(trainable)

    train_loader = _train_loader(train_set, in_samples, cfg, windows_per_epoch // world, workers,
                                 seed=cfg.seed + 1000 * rank + state["epoch"], targets=targets,
                                 end_range=live_window_range(config.live, in_samples))
    dev_loader = _dev_loader(dev_set, in_samples, cfg, targets)
    if master:
        out.mkdir(parents=True, exist_ok=True)
        save_config(out, config)
        parameters = sum(p.numel() for p in raw_model.parameters())
        print(f"distill: {parameters} parameters, {raw_model.count_macs() / 1e6:.2f} M MACs/window; "
              f"{sum(map(len, train_set))} training traces, {sum(map(len, dev_set))} dev traces, {steps_per_epoch} steps/epoch, "
              f"world {world}, {workers} loader workers")

    advice = f"lower distill.learning_rate={cfg.learning_rate} or check the data for NaNs"
    for epoch in range(state["epoch"], cfg.epochs):
        started = time.time()
        trainable.train()
        train_losses = []
        batches = iter(train_loader)
        for _ in tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not master, leave=False):
            batch = next(batches)
            teacher_probs = _teacher_target(batch, targets, device)
            x = batch["X"].to(device)
            logits, hinted = trainable(x)
            loss = _loss(cfg, logits, teacher_probs, _get(batch, "y", device),
                         streaming.channel_delays(raw_model))
            if teacher_features is not None:
                loss = loss + cfg.feature_weight * features.hint_loss(hinted, teacher_features(x))
            if cfg.shift_consistency > 0:
                loss = loss + cfg.shift_consistency * _shift_term(trainable, x, logits, shift_skip, cfg.phase_weight)
            train_losses.append(training.optimizer_step(
                loss, optimizer, schedule, trainable.parameters(), cfg.grad_clip, epoch, out, advice))
        train_seconds = time.time() - started
        dev_loss = _evaluate(raw_model, dev_loader, cfg, device, targets)
        # before anything of the epoch is saved: a finite loss can still leave inf BatchNorm statistics
        _check_finite(raw_model, epoch, out, advice, world, device, dev_loss)
        train_loss = _all_mean(float(np.mean(train_losses)), world, device)
        improved = training.record_dev_loss(state, dev_loss, epoch)
        state["history"].append({"epoch": epoch + 1, "train_loss": train_loss, "dev_loss": dev_loss,
                                 "lr": schedule.get_last_lr()[0], "seconds": round(time.time() - started, 1),
                                 "train_seconds": round(train_seconds, 1)})
        if master:
            if improved:
                _save_student(raw_model, out)
            training.save_checkpoint(out / CHECKPOINT, raw_model, optimizer, schedule, state, config, hint)
            training.write_metrics(out, state["history"], "distillation loss")
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


class _Logits(torch.nn.Module):
    """The student's pre-softmax output as ``forward``, so DistributedDataParallel syncs its gradients; with a
    feature hint (:class:`features.StudentHint`) also its adapted features (else None)."""

    def __init__(self, student, hint: "features.StudentHint | None" = None):
        super().__init__()
        self.student, self.hint = student, hint
        if hint is not None:
            hint.capture(student)

    def forward(self, x):
        logits = self.student.logits(x)
        if self.hint is None:
            return logits, None
        return logits, self.hint(x.shape[-1], window_padding(x.shape[-1])[0])


def _shift_term(trainable, x: torch.Tensor, logits: torch.Tensor, skip: int, phase_weight: float) -> torch.Tensor:
    """losses.shift_consistency_loss between the window's scores and those of the same samples from a window that
    starts k (1-63, drawn per batch) samples later and one block shorter: the same stream on a grid k samples later.
    The later window's first ``skip`` samples (its causal reach, which runs into its zero padding) are left out."""
    n, k = x.shape[-1], int(np.random.randint(1, streaming.BLOCK))
    shifted, _ = trainable(x[..., k : k + n - streaming.BLOCK])
    return losses.shift_consistency_loss(logits[..., k + skip : k + n - streaming.BLOCK], shifted[..., skip:],
                                         phase_weight)


class _Training:
    """One split of one dataset folder, opened for training."""

    def __init__(self, path: str, dataset):
        self.path, self.dataset = path, dataset

    def __len__(self):
        return len(self.dataset)


def _loss(cfg, logits: torch.Tensor, teacher_probs, hard_labels, delays=(0, 0, 0)) -> torch.Tensor:
    """:func:`distillation_loss` with the distill section's settings (training and dev loss alike). A causal
    student's score of class c at sample t is of sample t - ``delays[c]`` (streaming.channel_delays): compared with
    the targets there (:func:`delayed_targets`)."""
    if any(delays):
        logits = logits[..., max(delays):]
        teacher_probs = delayed_targets(teacher_probs, delays)
        hard_labels = delayed_targets(hard_labels, delays)
    return distillation_loss(logits, teacher_probs, hard_labels, cfg.temperature, cfg.alpha, cfg.phase_weight,
                             cfg.phase_weight_source, cfg.peak_shape, cfg.peak_shape_power, cfg.s_quiet_weight,
                             cfg.s_quiet_below)


def delayed_targets(targets: torch.Tensor | None, delays) -> torch.Tensor | None:
    """``targets`` (batch, classes P S N, n) as a causal student writes them: class c at sample t its value at
    t - ``delays[c]``, from sample max(delays) on. Where P and S have different delays the noise class is what the
    two leave (1 - P - S, at least 0) and each sample is a distribution again."""
    if targets is None:
        return None
    n, late = targets.shape[-1], max(delays)
    out = torch.stack([targets[:, c, late - d : n - d] for c, d in enumerate(delays)], dim=1)
    if len(set(delays)) > 1:
        noise = (1 - out[:, 0] - out[:, 1]).clamp_min(0)
        out = torch.stack([out[:, 0], out[:, 1], noise], dim=1)
        out = out / out.sum(dim=1, keepdim=True).clamp_min(1e-8)
    return out


def _datasets(config: Config, master: bool):
    """Train and dev splits of every folder in ``distill.dataset`` (comma-separated: a mixture), and the teacher's
    targets for them (None without a teacher, alpha = 0)."""
    cfg = config.distill
    paths = [p.strip() for p in cfg.dataset.split(",") if p.strip()]
    if not paths:
        raise EdgepickError("distill.dataset is empty")
    if cfg.dataset_weights and (len(cfg.dataset_weights) != len(paths) or min(cfg.dataset_weights) < 0
                                or not sum(cfg.dataset_weights) > 0):
        raise EdgepickError(f"distill.dataset_weights must be one weight >= 0 per folder of distill.dataset "
                            f"({len(paths)}), not all 0; got {list(cfg.dataset_weights)}")
    opened = {}
    for path in paths:  # cheap checks first: no teacher runs for a request that cannot train
        for split in ("train", "dev"):
            dataset = generators.load_for_training(path, split=split)
            if cfg.alpha < 1 and not _has_analyst_picks(dataset):
                raise EdgepickError(
                    f"alpha={cfg.alpha} < 1 needs analyst picks, but the {split} split of {path} has none: "
                    "use alpha=1 (teacher only) for unlabelled data"
                )
            opened[path, split] = dataset
    targets = None
    if cfg.alpha > 0:
        t = config.teacher
        targets = soft_labels.TrainingTargets(t.name, t.mode, device=t.device or None, batch_size=t.batch_size,
                                              cache_dir=t.cache_dir or None)
        for path in paths:
            if master:
                targets.build(path)
            _barrier()
            targets.open(path)
    train = [_Training(path, opened[path, "train"]) for path in paths]
    dev = [_Training(path, opened[path, "dev"]) for path in paths]
    return train, dev, targets


def live_window_range(live, in_samples: int) -> tuple[int, int]:
    """Where the live mode keeps predictions, in samples before a window's end, with 50 samples either side: from
    the smaller look-ahead to the larger look-ahead + hop (``distill.live_windows`` puts picks there)."""
    lookaheads = live.lookaheads().values()
    return max(1, min(lookaheads) - 50), min(in_samples, max(lookaheads) + live.hop_samples + 50)


def _teacher_picks(targets, train: _Training, cfg):
    """The teacher's picks per trace of a folder with no analyst picks, for ``distill.live_windows`` (else None)."""
    if targets is None or not cfg.live_windows or _has_analyst_picks(train.dataset):
        return None
    return targets.teacher_picks(train.path, train.dataset.metadata["trace_name"])


def _has_analyst_picks(dataset) -> bool:
    """Whether any trace of a dataset folder has an analyst pick (a labelled folder, not continuous data)."""
    columns = list(generators.phase_columns(dataset))
    return bool(columns) and bool(dataset.metadata[columns].notna().any().any())


def _train_loader(train: list[_Training], in_samples: int, cfg, windows: int, workers: int, seed: int, targets=None,
                  end_range: tuple[int, int] = (1, 1)):
    """Random windows from every training set; traces in which the teacher sees a phase are drawn more often (cache
    mode; on the fly the teacher has not seen the traces yet, so every trace is drawn equally often);
    ``cfg.live_windows`` of the windows around an analyst pick put it ``end_range`` samples before the end, and as
    many on continuous data a teacher pick (cache mode)."""
    generator = torch.utils.data.ConcatDataset(
        [generators.training_generator(t.dataset, in_samples, teacher_steps=_steps(targets, t, in_samples),
                                       hard_labels=cfg.alpha < 1, end_probability=cfg.live_windows,
                                       end_range=end_range, teacher_picks=_teacher_picks(targets, t, cfg),
                                       gap_resume=cfg.gap_resume)
         for t in train]
    )
    shares = [float(len(t)) for t in train]  # each folder's share of the windows: its share of the traces, or
    if cfg.dataset_weights:  # the mixture's weights
        shares = [float(w) * sum(shares) / sum(cfg.dataset_weights) for w in cfg.dataset_weights]
    weights = []
    for t, share in zip(train, shares):
        w = torch.ones(len(t))
        sees = None
        if targets is not None and cfg.oversample_phases > 1:
            sees = targets.sees_phase(t.path, t.dataset.metadata["trace_name"])
        if sees is not None:
            w[torch.from_numpy(sees)] = cfg.oversample_phases
        if targets is not None and cfg.oversample_near_field > 1:
            rate = float(t.dataset.metadata["trace_sampling_rate_hz"].iloc[0])  # load_for_training: one rate
            max_sp = int(round(cfg.near_field_s * rate))
            near = targets.near_field(t.path, t.dataset.metadata["trace_name"], max_sp)
            if near is not None:  # on top of oversample_phases: a near-field trace is a phase trace too
                w[torch.from_numpy(near)] *= cfg.oversample_near_field
        weights.append(w / w.sum() * share)
    sampler = torch.utils.data.WeightedRandomSampler(
        torch.cat(weights), num_samples=max(windows, cfg.batch_size), replacement=True,
        generator=torch.Generator().manual_seed(seed),
    )
    return torch.utils.data.DataLoader(
        generator, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers, drop_last=True,
        worker_init_fn=generators._seed_worker, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def _dev_loader(dev: list[_Training], in_samples: int, cfg, targets=None):
    generator = torch.utils.data.ConcatDataset(
        [generators.evaluation_generator(d.dataset, in_samples, seed=cfg.seed, teacher_steps=_steps(targets, d, in_samples))
         for d in dev]
    )
    return torch.utils.data.DataLoader(generator, batch_size=cfg.batch_size, num_workers=0)


def _steps(targets, split: _Training, in_samples: int):
    return targets.steps(split.path, in_samples) if targets is not None else None


def _teacher_target(batch: dict, targets, device) -> torch.Tensor | None:
    """The teacher's (P, S, noise) over each window as float32 on ``device`` (None without a teacher)."""
    if targets is None:
        return None
    return torch.as_tensor(targets.target(batch)).to(device).float()


@torch.no_grad()
def _evaluate(model, loader, cfg, device, targets=None) -> float:
    model.eval()
    losses, counts = 0.0, 0
    for batch in loader:
        teacher_probs = _teacher_target(batch, targets, device)
        logits = model.logits(batch["X"].to(device), channels_last=True)  # the training layout: same scores, faster
        loss = _loss(cfg, logits, teacher_probs, _get(batch, "y", device), streaming.channel_delays(model))
        losses += loss.item() * len(logits)
        counts += len(logits)
    return losses / max(counts, 1)


# What a resume may change, applied (learning rate, epochs, batch size, patience, ...), and what it may not:
# a checkpoint of another student, on other data, from another teacher, loss, start or fake quantization
# cannot go on (the weights would not fit, or its best dev loss would be of another problem).
_RESUME_SECTIONS = ("student", "teacher", "distill")
_RESUME_IGNORED = {"distill.resume", "teacher.finetune"}
_RESUME_REFUSED = ("student.", "distill.dataset", "distill.alpha", "distill.temperature", "distill.phase_weight",
                   "distill.peak_shape",
                   "distill.init_from", "distill.quantization_aware")


def _resume_changes(saved: dict | None, config: Config, path: Path) -> list[str]:
    """``"key old -> new"`` for each setting that differs from the checkpoint's and can change on resume (all of
    them are applied: the loop reads them from ``config``, the optimizer keeps the new rate and weight decay); one
    EdgepickError line naming every setting that would make the checkpoint meaningless."""
    if not isinstance(saved, dict):
        return []
    new = config.to_dict()
    changed, refused = [], []
    for section in _RESUME_SECTIONS:
        old_values, new_values = saved.get(section, {}), new[section]
        for key in sorted(set(old_values) | set(new_values)):
            name = f"{section}.{key}"
            if name in _RESUME_IGNORED:
                continue
            old, value = old_values.get(key), new_values.get(key)
            if _same(name, old, value):
                continue
            text = f"{name} {_show(old)} -> {_show(value)}"
            teacher_used = config.distill.alpha > 0
            if name.startswith(_RESUME_REFUSED) or (name == "teacher.name" and teacher_used):
                refused.append(text)
            else:
                changed.append(text)
    if refused:
        raise EdgepickError(f"--resume: checkpoint {path} was made with other settings that it cannot go on with: "
                            f"{', '.join(refused)}; set them back, or train anew without --resume (another "
                            f"distill.out, or delete {path})")
    return changed


def _same(name: str, old, new) -> bool:
    if name == "distill.dataset" and isinstance(old, str) and isinstance(new, str):
        return _folders(old) == _folders(new)
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return list(old) == list(new)
    return old == new


def _folders(datasets: str) -> list[str]:
    return [os.path.realpath(p.strip()) for p in datasets.split(",") if p.strip()]


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, str) else str(value)


def _check_finite(model, epoch: int, out: Path, advice: str, world: int, device, dev_loss: float | None = None):
    """training.check_finite, agreed by every rank: one rank's inf stops them all, before anything is saved."""
    if world > 1:
        local = bool(training.non_finite(model)) or (dev_loss is not None and not math.isfinite(dev_loss))
        flag = torch.tensor([float(local)], device=device)
        dist.all_reduce(flag)
        if flag.item() and not local:
            raise EdgepickError(f"non-finite weights on another process after epoch {epoch + 1}; stopped, "
                                f"{training.kept(out)} ({advice})")
    training.check_finite(model, epoch, out, advice, dev_loss)


def _load_student_weights(path: str, model) -> dict:
    """The state dict of a saved student that has ``model``'s architecture, or one clear line why not."""
    saved = load_student(path)
    bad = training.non_finite(saved)
    if bad:
        raise EdgepickError(f"distill.init_from={path}: that student holds non-finite weights ({training.names(bad)}) "
                            "of a run that diverged; start from another one")
    if saved.state_dict().keys() != model.state_dict().keys() or any(
        a.shape != b.shape for a, b in zip(saved.state_dict().values(), model.state_dict().values())
    ):
        raise EdgepickError(f"distill.init_from={path}: that student's architecture differs from the student config")
    for name in ("activation", "smooth_output"):  # not in the state dict: a mismatch would change the network silently
        if getattr(saved, name) != getattr(model, name):
            raise EdgepickError(f"distill.init_from={path}: that student has {name} {getattr(saved, name)!r}, the "
                                f"student config {getattr(model, name)!r}; set student.{name}={getattr(saved, name)}")
    return saved.state_dict()


def _get(batch: dict, key: str, device) -> torch.Tensor | None:
    return batch[key].to(device) if key in batch else None


def _record_live_rule(model, live) -> None:
    """The live rule of ``live`` saved with the student (its ``default_args``), when the live mode is on and its
    settings fit the student's window (they are refused where they are used: make quantize, make benchmark)."""
    model.default_args.pop("live_rule", None)  # an init_from student's is not this run's
    if model.causal:  # a streaming student's live mode is its stream (pipeline.model.streaming.live_rule)
        model.default_args["live_rule"] = streaming.live_rule(model).saved()
    elif live.enabled:
        try:
            model.default_args["live_rule"] = live.rule(model.in_samples).saved()
        except EdgepickError:
            pass


def _save_student(model, out: Path) -> None:
    """The best student so far, as a SeisBench model (student.json + student.pt), replaced atomically."""
    training.save_model(model, out, STUDENT)


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
