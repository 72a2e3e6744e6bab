"""Studies: the figures a recipe choice or a README figure is measured with, each printed, never asserted in timed
tests (``python -m pipeline study NAME ...``). Like the scripts, they sit above the libraries and import no stage."""

NAMES = ("agreement", "data", "distill_modes", "gate", "grid_phase", "kd_vs_hard", "listen", "live", "pick_rules",
         "quantize", "s_picks", "score", "soft_labels")
# studies merged into ``study score`` (issue 29): the command that prints what each printed
MERGED = {"dev": "score [--split dev] (--dev is now --dataset)", "student": "score --split all --by-sp",
          "blinding": "score --split all --blinding own,student,none"}
