"""mlm_jax: masked-language-model pretraining of BERT-style encoders on JAX."""

__version__ = "0.1.0"
