"""The PyTorch peer of ``bench_train.py``: transformers' BertForMaskedLM step, one JSON line.

    python scripts/bench_peer_torch.py --config configs/tiny.yaml [--set k=v ...] [--steps 20]

Takes the same config and ``--set`` overrides as ``bench_train.py`` and trains what a
user would pick instead on a CPU box: ``BertForMaskedLM`` (PyTorch's SDPA attention) with
``torch.optim.AdamW`` at the config's betas, epsilon, weight decay and clipping, dropout at
the config's rates, in fp32 or, for ``model.dtype=bfloat16``, under
``torch.autocast("cpu", bfloat16)`` with fp32 weights (what the Trainer's ``--bf16`` does).

The batches are ``bench_train``'s: the same packed rows of two documents (a block-diagonal
attention mask and per-document positions) with the same masked slots, labelled where
the slot weight is positive. The model computes the vocabulary logits at every position,
as transformers does; ours gathers the masked slots first, which is part of what is
compared. Needs only the ``hf`` extra.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import torch
import transformers
from bench_train import random_batch, step_bench_parser  # same folder: the same batches

from mlm_jax import config as config_lib
from mlm_jax.hf import names


def peer_model(config) -> transformers.BertForMaskedLM:
    """A randomly initialised BERT of the config's shape and dropout (the mapping our
    export writes), SDPA attention, in train mode."""
    bert = transformers.BertConfig(**names.hf_config(config), attn_implementation="sdpa")
    return transformers.BertForMaskedLM(bert).train()


def torch_batch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """``bench_train``'s batch as BertForMaskedLM's inputs."""
    ids = torch.from_numpy(batch["input_ids"]).long()
    segments = torch.from_numpy(batch["segment_ids"])
    labels = torch.full_like(ids, -100)
    rows = torch.arange(ids.shape[0])[:, None]
    slots = torch.from_numpy(batch["mlm_positions"]).long()
    weighted = torch.from_numpy(batch["mlm_weights"]) > 0
    labels[rows.expand_as(slots)[weighted], slots[weighted]] = torch.from_numpy(
        batch["mlm_labels"]
    ).long()[weighted]
    # [B, 1, L, L] bool, True where a query may see a key: its own packed document.
    mask = (segments[:, None, :, None] == segments[:, None, None, :]).contiguous()
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": torch.from_numpy(batch["positions"]).long(),
        "labels": labels,
    }


def main() -> None:
    parser = step_bench_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    config = config_lib.load(args.config, args.set)
    if config.model.family != "bert":
        parser.error("the PyTorch peer is BERT: add --set model.family=bert")
    steps = max(args.steps, 20)
    bf16 = config.model.dtype == "bfloat16"

    torch.manual_seed(config.train.seed)
    model = peer_model(config)
    optim = config.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=optim.learning_rate, betas=(optim.b1, optim.b2), eps=optim.eps,
        weight_decay=optim.weight_decay,
    )  # fmt: skip
    rows = config.train.global_batch_size
    batches = [torch_batch(random_batch(config, rows, seed)) for seed in range(2)]

    def step(batch) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        if optim.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    step(batches[0])  # warm-up: first-run allocations and oneDNN's kernel choices
    times = []
    for index in range(steps):
        started = time.perf_counter()
        loss = step(batches[index % 2])
        times.append(time.perf_counter() - started)
    step_s = statistics.median(times)
    print(
        json.dumps(
            {
                "bench": "train_peer_torch",
                "config": args.config,
                "overrides": args.set,
                "dtype": config.model.dtype,
                "params": sum(p.numel() for p in model.parameters()),
                "global_batch_size": rows,
                "seq_len": config.data.seq_len,
                "dropout": [config.model.dropout_rate, config.model.attention_dropout_rate],
                "step_s": round(step_s, 5),
                "steps": steps,
                "tokens_per_s": round(rows * config.data.seq_len / step_s, 1),
                "final_loss": loss,
                "threads": torch.get_num_threads(),
                "torch_version": torch.__version__,
                "transformers_version": transformers.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
