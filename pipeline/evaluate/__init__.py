"""Evaluation: the metrics, the benchmark report, the live pass and the dev split recipe choices are made on."""
