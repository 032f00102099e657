"""``python -m mlm_jax.cli``: the same command as the ``mlm-jax`` script (tests and the
multi-process launcher start it this way)."""

from mlm_jax.cli import entry

entry()
