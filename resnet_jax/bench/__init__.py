"""What the benchmarks and the GPU check compare against: device peaks, published figures."""
