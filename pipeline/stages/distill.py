"""``make distill``: a teacher (or an ensemble) teaches the XiaoNet-style student (:mod:`pipeline.distill.loop`,
loss :mod:`pipeline.distill.losses`). Runs as one process, or as several with ``torchrun --nproc_per_node=N -m pipeline
distill`` (DistributedDataParallel; gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

from pipeline.config import Config
from pipeline.distill.loop import distill


def run(config: Config) -> dict:
    return distill(config)
