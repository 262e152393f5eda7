"""Storage codecs: the grammar and the implementations name the same kinds, each kind stores what the schema says,
numpy and torch run one definition (bit for bit), and the PCA and int8 maths hold on known cases."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from distillkit_schemas.storage import FORMS, parse_storage
from distillkit_schemas.storage import KINDS as SCHEMA_KINDS

from distillkit.store.codecs import KINDS, codec_from_arrays, fit_codec

C, K = 16, 8
STORAGES = [form.replace("K", str(K)) for form in FORMS]  # fp16, int8, pca:8, pca:8+int8


def test_every_kind_the_grammar_accepts_has_an_implementation_and_back():
    assert set(KINDS) == set(SCHEMA_KINDS)
    assert {k for s in STORAGES for k in s.replace(f":{K}", "").split("+")} == set(KINDS)


@pytest.mark.parametrize("bad", ["int8+pca:3", "fp16+int8", "pca:3+pca:4", "int8+int8", "pca", "pca:", "pca:x",
                                 "int8:3", "fp8", ""])
def test_the_grammar_refuses_other_spellings(bad):
    with pytest.raises(ValueError, match=re.escape(f"is not one of {', '.join(FORMS)} (K a positive integer)")):
        parse_storage(bad)


@pytest.mark.parametrize("storage", STORAGES)
def test_each_kind_stores_what_the_schema_says(storage):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5, C)).astype(np.float16)
    codec = fit_codec(storage, x.reshape(-1, C), x[:, 0, 0])
    st = parse_storage(storage, C)
    assert {n: (a.shape, str(a.dtype)) for n, a in codec.arrays().items()} == {
        n: (shape, dtype) for n, (shape, dtype, _) in st.codec_arrays(C).items()}
    patch, cls = codec.encode(x, "float16"), codec.encode(x[:, 0, 0], "float16", "cls")
    assert patch.shape == (3, 4, 5, st.width(C)) and patch.dtype == cls.dtype == np.dtype(st.dtype("float16"))
    assert patch.nbytes + cls.nbytes == 3 * st.bytes_per_sample((4, 5), C, "float16")
    assert codec.decode(patch, dtype="float16").shape == x.shape and cls.shape == (3, C)


def _dyadic(rng, shape, step: float, high: float) -> np.ndarray:
    """Random multiples of `step` in [-high, high]: every sum below is exact in float32, so the comparison checks
    the two paths' operations, not how a BLAS orders its sums (numpy's and torch's differ)."""
    return (rng.integers(-int(high / step), int(high / step) + 1, shape) * step).astype(np.float32)


def _random_codec(storage: str, rng):
    st = parse_storage(storage, C)
    arrays = {name: _dyadic(rng, shape, 2.0 ** -6, 1.0) for name, (shape, _, _) in st.codec_arrays(C).items()}
    for name in ("scale", "cls_scale"):
        if name in arrays:
            arrays[name] = np.abs(arrays[name]) + 2.0 ** -6
    if "basis" in arrays:
        arrays["basis"] = _dyadic(rng, arrays["basis"].shape, 2.0 ** -4, 1.0)
    return codec_from_arrays(st, arrays), st


def _same_bits(a: np.ndarray, b: torch.Tensor) -> None:
    b = b.float().numpy()
    a = a.astype(np.float32)
    assert a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("storage", STORAGES)
def test_numpy_and_torch_decode_agree_bit_for_bit(storage):
    rng = np.random.default_rng(1)
    codec, st = _random_codec(storage, rng)
    on_torch = codec.to("cpu")
    stored_dtype = st.dtype("float16")
    for token, width in (("patch", st.width(C)), ("cls", C)):
        shape = (2, 3, 4, width) if token == "patch" else (5, width)
        stored = (rng.integers(-127, 128, shape) if stored_dtype == "int8"
                  else _dyadic(rng, shape, 2.0 ** -4, 8.0)).astype(stored_dtype)
        for target in ("full", "coeffs") if st.projects else ("full",):
            want = codec.decode(stored, token, target, "float32")
            _same_bits(want, on_torch.decode(torch.from_numpy(stored), token, target))
        x = _dyadic(rng, (*shape[:-1], C), 2.0 ** -4, 8.0).astype(np.float16)
        got = on_torch.encode(torch.from_numpy(x), "float16", token)
        assert np.array_equal(codec.encode(x, "float16", token), got.numpy())


def test_pca_basis_is_exact_on_a_known_subspace():
    rng = np.random.default_rng(0)
    c, k = 24, 3
    q, _ = np.linalg.qr(rng.standard_normal((c, k)))  # an orthonormal 3-dim subspace of R^24
    coeffs = rng.standard_normal((500, k)) * np.array([5.0, 2.0, 0.5])
    x = coeffs @ q.T + 3.0
    codec = fit_codec(f"pca:{k}", x)
    (pca,) = codec.stages
    np.testing.assert_allclose(pca.mean, 3.0 * np.ones(c) + (coeffs.mean(0) @ q.T), atol=1e-5)
    np.testing.assert_allclose(pca.basis @ pca.basis.T, np.eye(k), atol=1e-5)  # orthonormal
    proj = q @ q.T  # the fitted basis spans exactly the true subspace
    np.testing.assert_allclose(pca.basis.T @ pca.basis, proj, atol=1e-5)
    np.testing.assert_allclose(codec.decode(codec.encode(x, "float32"), dtype="float32"), x, atol=1e-4)
    assert codec.retained_variance() == pytest.approx(1.0, abs=1e-9)
    # eigenvalues: the variances of the three coefficients, largest first, then zeros
    np.testing.assert_allclose(pca.eigenvalues[:k], np.sort(coeffs.var(0))[::-1], rtol=0.05)
    assert pca.eigenvalues[k:].max() < 1e-9


def test_int8_codes_use_the_range_and_round_trip_within_half_a_step():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((1000, 16)) * np.linspace(0.1, 30, 16)).astype(np.float16)  # outlier channels
    codec = fit_codec("int8", x)
    q = codec.encode(x, "float16")
    assert q.dtype == np.int8 and np.abs(q).max() <= 127 and np.abs(q).max() >= 115
    err = np.abs(codec.decode(q, dtype="float32") - x.astype(np.float32))
    assert (err <= codec.stages[0].scale / 2 + 1e-3 * np.abs(x)).all()
