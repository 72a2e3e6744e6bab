"""Data sources. Each module exposes ``records(config: DataConfig)`` yielding ``(metadata, waveform)`` pairs
(see :mod:`pipeline.stages.data`), or returning ``(iterator, total, writer_options)`` where noted."""
