"""Test set-up: eight simulated CPU devices, so that sharding runs as on an 8-GPU node."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
