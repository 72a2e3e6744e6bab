"""Data: the sources, the SeisBench-format datasets, waveforms and windows, the training generators."""
