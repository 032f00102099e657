"""Scoring many (query, passage) or text pairs with a cross-encoder, in fixed-size chunks.

Fine-tuning's held-out evaluation, ``mlm-jax score`` / ``search`` and the export's check
against transformers all score through :class:`Scorer`: the same pair encoding, packing and
one compiled forward pass, so the three cannot drift apart.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mlm_jax.data import finetune_data as data_lib
from mlm_jax.model import objectives, sharding


class Scorer:
    """Logits ``[N, C]`` for many rows, in fixed-size chunks (one compilation), eval mode."""

    def __init__(self, config, mesh, graphdef, param_shardings, tokenizer, chunk_rows: int):
        devices = mesh.shape["data"] * mesh.shape["fsdp"]
        self.chunk_rows = -(-max(chunk_rows, devices) // devices) * devices
        self.mesh = mesh
        self.encoder = data_lib.PairEncoder(
            tokenizer, config.data.seq_len, config.finetune.max_query_tokens
        )
        self.pack = pack_multiple(config, mesh)

        def logits(params, batch):
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                return objectives.cross_encoder_logits(graphdef, params, batch)

        self._logits = jax.jit(
            logits,
            in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
            out_shardings=NamedSharding(mesh, P()),
        )

    def __call__(self, params, pairs: list[tuple[str, str | None]]) -> np.ndarray:
        out = []
        process = (jax.process_index(), jax.process_count())
        for start in range(0, len(pairs), self.chunk_rows):
            chunk = pairs[start : start + self.chunk_rows]
            padded = chunk + [chunk[-1]] * (self.chunk_rows - len(chunk))
            rows = data_lib.encode_share(self.encoder, padded, self.pack, process)
            logits = self._logits(params, sharding.host_batch_to_global(rows, self.mesh))
            out.append(np.asarray(jax.device_get(logits))[: len(chunk)])
        return np.concatenate(out).astype(np.float32)


def pack_multiple(config, mesh) -> int:
    """Packed rows come in multiples of this (0: no packing): of the batch's devices, and
    of 8 so that a run meets only a few row counts, each compiled once."""
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    # Gradient accumulation splits a batch by rows, which packing no longer keeps per example.
    if not config.finetune.pack_rows or config.optim.grad_accum_steps > 1:
        return 0
    return -(-8 // devices) * devices
