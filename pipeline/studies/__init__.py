"""Studies: the figures a recipe choice or a README figure is measured with, each printed, never asserted in timed
tests (``python -m pipeline study NAME ...``). Like the scripts, they sit above the libraries and import no stage."""

NAMES = ("agreement", "blinding", "data", "dev", "distill_modes", "gate", "kd_vs_hard", "listen", "live", "pick_rules",
         "quantize", "s_picks", "soft_labels", "student")
