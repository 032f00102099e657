"""Which JAX backend a command may start, decided before JAX is imported.

The ``tpu`` extra installs libtpu so ``mlm-jax plan`` can compile for TPU slices on a CPU
host. With JAX_PLATFORMS unset, JAX then tries to start a real TPU at its first device
query, and libtpu, finding none, prints half a screen of errors to stderr before JAX falls
back to the CPU: on every command that touches JAX, even ``data relevance`` (bm25s imports
JAX). Where the host has no TPU chip and JAX has no plugin for another accelerator, the CPU
is the only backend JAX could end on, so naming it up front changes nothing but the noise.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

# Google's PCI vendor id: every TPU chip a host carries shows up under it.
_GOOGLE_PCI_VENDOR = "0x1ae0"


def _host_has_tpu() -> bool:
    vendors = glob.glob("/sys/bus/pci/devices/*/vendor")
    return any(Path(path).read_text().strip() == _GOOGLE_PCI_VENDOR for path in vendors)


def _has_accelerator_plugin() -> bool:
    """A GPU (or other) PJRT plugin JAX would discover: leave its choice alone."""
    from importlib import metadata, util

    if metadata.entry_points(group="jax_plugins"):
        return True
    return util.find_spec("jax_plugins") is not None


def cpu_unless_accelerator() -> None:
    """Set JAX_PLATFORMS=cpu where no TPU chip and no accelerator plugin exist; a value the
    user set is kept."""
    if "JAX_PLATFORMS" in os.environ or _host_has_tpu() or _has_accelerator_plugin():
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
