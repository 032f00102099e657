"""Test set-up: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Two cores: keep TensorFlow-free TFDS and Grain from spawning thread storms.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
