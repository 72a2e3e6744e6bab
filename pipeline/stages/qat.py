"""``make qat``: quantization-aware fine-tuning of a distilled student (``qat.init_from``) into ``qat.out``.

The distillation loop of :mod:`pipeline.distill.loop` with its data, teacher and loss, started from the
distilled weights, a lower learning rate and int8 fake quantization at exactly the tensors TFLite Micro stores as
int8 (:mod:`pipeline.distill.fake_quant`), so the INT8 build picks like the float student.
"""

from __future__ import annotations

import copy

from pipeline.distill.loop import distill


def run(config) -> dict:
    q = config.qat
    fine_tuning = copy.deepcopy(config)
    d = fine_tuning.distill
    d.init_from, d.out, d.epochs, d.learning_rate, d.patience = q.init_from, q.out, q.epochs, q.learning_rate, q.patience
    d.quantization_aware = True
    return distill(fine_tuning)
