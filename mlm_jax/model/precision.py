"""The mixed-precision policy: how every matrix product of the model is computed.

One rule, applied by the two functions below to every dense layer, both attention
products, the MLM head's vocabulary projection and the fine-tuning heads:

* ``float32``: operands in float32, accumulate in float32. These are the exact calls
  the model made before this module existed, so fp32 runs are bit for bit unchanged.
* ``bfloat16``: operands rounded to bfloat16, products accumulated in float32, in the
  forward pass **and** in both backward products. Left to autodiff, the transpose of
  ``dot(bf16, bf16) -> f32`` multiplies the float32 cotangent by the operand converted
  back to float32, so two thirds of the matmul FLOPs would run at fp32 (TF32 on a GPU,
  plain FMA units on an AMX CPU). A ``custom_vjp`` casts the cotangent to bfloat16
  first and asks for float32 accumulation explicitly, so the backward products run on
  the same bf16 units as the forward one.

What stays float32, and why: parameters and optimizer state (bf16 has 8 bits of
mantissa; small Adam updates would vanish when added to bf16 weights), layer norms,
softmax and the loss (reductions over many terms, where bf16 loses the small ones), the
residual stream (each block adds a small correction to it), and gradients, hence their
all-reduce (they are the float32 outputs of the products above, summed over devices in
float32 so that many small contributions are not rounded away).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp

_BATCH_LETTERS = "abcdefgh"
_OUT_LETTERS = "uvwxy"


def compute_dtype(name: str):
    """The matmul operand dtype for ``model.dtype``."""
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def einsum(spec: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
    """``jnp.einsum(spec, a, b)`` under the policy; always returns float32.

    ``spec`` names every axis with a letter (no ``...``), and every letter of an operand
    appears in the other operand or in the output, so the two backward products are
    themselves einsums.
    """
    if dtype == jnp.float32:
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
    return _low_precision_einsum(spec, jnp.dtype(dtype), a.dtype, b.dtype)(a, b)


def dense(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
    """``x [..., in] @ kernel [in, *out] -> [..., *out]`` under the policy (float32 out)."""
    if dtype == jnp.float32:
        return jnp.tensordot(
            x.astype(dtype), kernel.astype(dtype), axes=1, preferred_element_type=jnp.float32
        )
    return einsum(dense_spec(x.ndim, kernel.ndim), x, kernel, dtype)


def dense_spec(x_ndim: int, kernel_ndim: int) -> str:
    """The einsum of a dense layer: contract x's last axis with the kernel's first."""
    batch, outs = _BATCH_LETTERS[: x_ndim - 1], _OUT_LETTERS[: kernel_ndim - 1]
    return f"{batch}z,z{outs}->{batch}{outs}"


@functools.cache
def _low_precision_einsum(spec: str, dtype, a_dtype, b_dtype):
    """A ``custom_vjp`` einsum whose forward and backward products all take ``dtype``."""
    inputs, out = spec.split("->")
    lhs, rhs = inputs.split(",")
    for operand, other in ((lhs, rhs + out), (rhs, lhs + out)):
        if not set(operand) <= set(other) or len(set(operand)) != len(operand):
            raise ValueError(f"einsum {spec!r}: no einsum form of its gradient")
    lhs_grad = _canonical_product(out, rhs, lhs)
    rhs_grad = _canonical_product(out, lhs, rhs)

    def product(s, x, y):
        return jnp.einsum(s, x, y, preferred_element_type=jnp.float32)

    def grad_product(order, cotangent, other):
        swapped, s = order
        x, y = (other, cotangent) if swapped else (cotangent, other)
        return product(s, x, y)

    @jax.custom_vjp
    def low(a, b):
        return product(spec, a.astype(dtype), b.astype(dtype))

    def forward(a, b):
        a_low, b_low = a.astype(dtype), b.astype(dtype)
        # The bf16 copies are what the backward products need: half the residual memory.
        return product(spec, a_low, b_low), (a_low, b_low)

    def backward(residuals, cotangent):
        a_low, b_low = residuals
        cotangent = cotangent.astype(dtype)
        return (
            grad_product(lhs_grad, cotangent, b_low).astype(a_dtype),
            grad_product(rhs_grad, cotangent, a_low).astype(b_dtype),
        )

    low.defvjp(forward, backward)
    return low


def _canonical_product(x: str, y: str, out: str) -> tuple[bool, str]:
    """``(swapped, spec)`` of the product ``x, y -> out`` with its operands in the order
    a matmul writes its output: the first operand holds the output's first free axis.

    Both orders compute the same thing, but XLA:CPU has bf16 kernels only for some
    layouts; with the operands in output order it needs no transpose of the result
    and finds one (the other order of the attention value gradient fails to run).
    """
    batch = set(x) & set(y) & set(out)
    first_free = next(letter for letter in out if letter not in batch)
    if first_free in x:
        return False, f"{x},{y}->{out}"
    return True, f"{y},{x}->{out}"


# ----------------------------------------------------------------------------- inspection

_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*\(?(\w+)\[")
_PRODUCT = re.compile(r"=\s*\(?\w+\[([\d,]*)\][^(=]*\s(dot|convolution|custom-call)\(([^)]*)\)")
# On a GPU, XLA hands most products to libraries: cuBLAS GEMMs and cuDNN's fused
# attention appear as custom calls, whose first two operands are the multiplied ones.
_LIBRARY_PRODUCT = re.compile(r'custom_call_target="(__cublas\$[\w$]*|__cudnn\$fmha[\w$]*)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_OPERAND = re.compile(r"%([\w.\-]+)")


def matrix_products(hlo_text: str) -> list[tuple[tuple[str, ...], str, tuple[int, ...]]]:
    """``(operand dtypes, op name, output shape)`` of every matrix product in compiled HLO.

    How the policy is checked where speed cannot show it (a CPU without bf16 units):
    the compiled program says which precision each product really runs in. Products
    are ``dot``/``convolution`` instructions, and on a GPU also the cuBLAS and cuDNN
    custom calls. Compiled HLO prints operands by name only, so dtypes come from the
    definitions (instruction names are unique within a module).
    """
    dtypes = {}
    for line in hlo_text.splitlines():
        if match := _DEFINITION.match(line):
            dtypes[match.group(1)] = match.group(2)
    products = []
    for line in hlo_text.splitlines():
        match = _PRODUCT.search(line)
        if not match or (match.group(2) == "custom-call" and not _LIBRARY_PRODUCT.search(line)):
            continue
        operands = _OPERAND.findall(match.group(3))[:2]
        op_name = _OP_NAME.search(line)
        shape = tuple(int(d) for d in match.group(1).split(",") if d)
        products.append(
            (tuple(dtypes[o] for o in operands), op_name.group(1) if op_name else line, shape)
        )
    return products


def operand_dtype_counts(hlo_text: str) -> dict[str, int]:
    """How many products of a compiled program take each operand dtype pair, e.g. bf16xbf16."""
    counts: dict[str, int] = {}
    for dtypes, _, _ in matrix_products(hlo_text):
        key = "x".join(dtypes)
        counts[key] = counts.get(key, 0) + 1
    return counts
