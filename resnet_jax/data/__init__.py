"""Input data: DALI pipelines, folder scanning, synthetic batches, the demo data set."""

# Where training images come from (config.data.backend): DALI decoding on the GPUs or on
# the CPU, or one random device-resident batch (benchmarks without I/O).
BACKENDS = ("dali_gpu", "dali_cpu", "synthetic")
