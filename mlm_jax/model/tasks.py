"""What a run trains, decided once from its config: the model, its objective, its export.

Pretraining trains the :class:`~mlm_jax.model.encoder.Encoder` under the masked-LM
objective and exports a ``*ForMaskedLM``; fine-tuning trains a
:class:`~mlm_jax.model.cross_encoder.CrossEncoder` (a classifier, or a reranker with one
output) under ``finetune.loss`` and exports a ``*ForSequenceClassification``. Every
place that builds a train state, restores, exports, imports or loads a model asks the
run's :class:`Task` instead of testing the config itself; a new kind of run is one new
subclass here (and, if it exports as something new, its tensor names in
:mod:`mlm_jax.hf.names`).
"""

from __future__ import annotations

import abc
from typing import ClassVar

from flax import nnx

from mlm_jax.model import objectives
from mlm_jax.model.cross_encoder import CrossEncoder, num_outputs
from mlm_jax.model.encoder import Encoder
from mlm_jax.model.objectives import Objective


class Task(abc.ABC):
    """One kind of run. ``export_kind`` names the transformers head it exports as."""

    export_kind: ClassVar[str]
    fine_tuned: ClassVar[bool]

    def __init__(self, config):
        self.config = config

    @abc.abstractmethod
    def build(self, rngs: nnx.Rngs) -> nnx.Module:
        """The model, initialised from ``rngs``."""

    @property
    @abc.abstractmethod
    def objective(self) -> Objective:
        """What the train step optimises."""

    @abc.abstractmethod
    def with_encoder(self, params: nnx.State, encoder: nnx.State) -> nnx.State:
        """``params`` with the encoder's weights replaced by ``encoder`` (``init_from``)."""

    def abstract(self) -> tuple[nnx.GraphDef, nnx.State]:
        """``(graphdef, params)`` made of shapes only."""
        return nnx.split(nnx.eval_shape(lambda: self.build(nnx.Rngs(0))))


class Pretraining(Task):
    export_kind = "masked_lm"
    fine_tuned = False

    def build(self, rngs: nnx.Rngs) -> nnx.Module:
        return Encoder(self.config.model, rngs=rngs)

    @property
    def objective(self) -> Objective:
        return objectives.MLM

    def with_encoder(self, params: nnx.State, encoder: nnx.State) -> nnx.State:
        return encoder  # the model is the encoder


class CrossEncoding(Task):
    """Classification (``num_labels`` outputs) or reranking (one): a pooler and a
    classifier on the encoder's ``[CLS]``."""

    export_kind = "sequence_classification"
    fine_tuned = True

    def build(self, rngs: nnx.Rngs) -> nnx.Module:
        return CrossEncoder(self.config.model, num_outputs(self.config), rngs=rngs)

    @property
    def objective(self) -> Objective:
        return objectives.finetune_objective(self.config.finetune.loss)

    def with_encoder(self, params: nnx.State, encoder: nnx.State) -> nnx.State:
        params["encoder"] = encoder  # a new pooler and classifier around it
        return params


def task_of(config) -> Task:
    """The run's task: fine-tuning when the config has a ``finetune:`` section."""
    return Pretraining(config) if config.finetune is None else CrossEncoding(config)
