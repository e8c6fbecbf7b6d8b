"""Geometry against independent references (scipy), the dense route, constructed cases and random baselines."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from orthopatch.analysis.geometry import (
    cross_overlap,
    dense_svd,
    empirical_baselines,
    energy_random_baseline,
    lora_delta_svd,
    magnitudes,
    module_geometry,
    mso,
    mso_random_baseline,
    orthonormal,
    paper_similarity,
    principal_cosines,
    projection_energy,
    top_singular,
)


def rng(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("d", "k1", "k2"), [(20, 3, 5), (64, 8, 8), (100, 16, 4)])
def test_principal_angles_match_scipy(d, k1, k2):
    a = torch.randn(d, k1, generator=rng(1), dtype=torch.float64)
    b = torch.randn(d, k2, generator=rng(2), dtype=torch.float64)
    ours = principal_cosines(orthonormal(a), orthonormal(b)).numpy()
    reference = np.sort(np.cos(scipy.linalg.subspace_angles(a.numpy(), b.numpy())))[::-1]
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    assert abs(mso(orthonormal(a), orthonormal(b)) - float(np.mean(reference**2))) < 1e-6


@pytest.mark.parametrize(("d_out", "d_in", "r"), [(48, 96, 4), (96, 40, 8), (30, 30, 1)])
def test_lora_fast_path_matches_dense_route(d_out, d_in, r):
    A = torch.randn(r, d_in, generator=rng(3), dtype=torch.float64)
    B = torch.randn(d_out, r, generator=rng(4), dtype=torch.float64)
    fast = lora_delta_svd(A, B, 2.0)
    dense = dense_svd(2.0 * B @ A).truncate(r)
    torch.testing.assert_close(fast.S, dense.S, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(fast.dense(), 2.0 * B @ A, atol=1e-10, rtol=1e-8)
    # Same subspaces (projectors; singular vectors are only defined up to sign).
    torch.testing.assert_close(fast.V @ fast.V.T, dense.V @ dense.V.T, atol=1e-8, rtol=0)
    W0 = torch.randn(d_out, d_in, generator=rng(5), dtype=torch.float64)
    base = dense_svd(W0)
    a = module_geometry(base, float(W0.norm()), fast, r, [r, 8])
    b = module_geometry(base, float(W0.norm()), dense, r, [r, 8])
    for k in a["k"]:
        for key, value in a["k"][k].items():
            if key == "random":
                continue
            other = b["k"][k][key]
            ours, theirs = (value, other) if isinstance(value, list) else ([value], [other])
            assert max(abs(x - y) for x, y in zip(ours, theirs, strict=True)) < 1e-5, (k, key)
    assert abs(a["fro"] - float((2.0 * B @ A).norm())) < 1e-8


def test_update_inside_the_top_subspace_scores_one_and_outside_zero():
    d_out, d_in, k, r = 40, 60, 8, 4
    W0 = torch.randn(d_out, d_in, generator=rng(6), dtype=torch.float64)
    base = dense_svd(W0)
    # Inside: ΔW = U0_k M V0_kᵀ with M of rank r.
    M = torch.randn(k, r, generator=rng(7), dtype=torch.float64) @ torch.randn(r, k, generator=rng(8),
                                                                               dtype=torch.float64)
    inside = dense_svd(base.U[:, :k] @ M @ base.V[:, :k].T).truncate(r)
    g = module_geometry(base, float(W0.norm()), inside, r, [k])["k"][str(k)]
    assert g["energy_input"] > 1 - 1e-9 and g["energy_output"] > 1 - 1e-9
    assert g["mso_input"] > 1 - 1e-9 and g["max_cosine_input"] > 1 - 1e-9
    assert g["paper_similarity"] > 0.3  # a max entry of an orthogonal 4x8 block: far from 0
    # Outside: project random factors onto the orthogonal complements of the top-k subspaces.
    P_out = torch.eye(d_out, dtype=torch.float64) - base.U[:, :k] @ base.U[:, :k].T
    P_in = torch.eye(d_in, dtype=torch.float64) - base.V[:, :k] @ base.V[:, :k].T
    X = P_out @ torch.randn(d_out, r, generator=rng(9), dtype=torch.float64)
    Y = P_in @ torch.randn(d_in, r, generator=rng(10), dtype=torch.float64)
    outside = dense_svd(X @ Y.T).truncate(r)
    g = module_geometry(base, float(W0.norm()), outside, r, [k])["k"][str(k)]
    for key in ("energy_input", "energy_output", "mso_input", "mso_output", "paper_similarity"):
        assert g[key] < 1e-9, key


def test_random_subspaces_match_the_stated_baselines():
    d, r, k, n = 200, 8, 32, 64
    stats = empirical_baselines(d, r, k, samples=n, seed=1)
    expected = mso_random_baseline(r, k, d)
    # Per-sample sd of MSO is below 0.06 here; the mean of 64 is within 4 standard errors.
    assert abs(stats["mso"] - expected) < 4 * 0.06 / math.sqrt(n)
    assert abs(stats["projection_energy"] - energy_random_baseline(k, d)) < 4 * 0.06 / math.sqrt(n)
    assert 0 < stats["paper_similarity"] < 1


def test_projection_energy_and_magnitudes_by_hand():
    Q = torch.eye(4, 2, dtype=torch.float64)
    S = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert projection_energy(S, torch.eye(4, 2, dtype=torch.float64), Q[:, :1]) == pytest.approx(9 / 25)
    m = magnitudes(S, base_fro=10.0)
    assert m["fro"] == pytest.approx(5.0) and m["spectral"] == pytest.approx(4.0)
    assert m["relative_fro"] == pytest.approx(0.5) and m["stable_rank"] == pytest.approx(25 / 16)
    assert m["significant_singular_values"] == 2
    assert paper_similarity(torch.eye(4, 1, dtype=torch.float64), torch.eye(4, 2, dtype=torch.float64)) == 1.0


def test_randomized_top_singular_agrees_with_exact_on_a_decaying_spectrum():
    U = orthonormal(torch.randn(300, 300, generator=rng(11), dtype=torch.float64))
    V = orthonormal(torch.randn(200, 200, generator=rng(12), dtype=torch.float64))
    S = torch.logspace(2, -3, 200, dtype=torch.float64)
    W = (U[:, :200] * S) @ V.T
    exact = top_singular(W, 8)
    fast = top_singular(W, 8, exact_below=10)
    torch.testing.assert_close(fast.S, exact.S, rtol=1e-6, atol=1e-8)
    assert mso(fast.V, exact.V) > 1 - 1e-6


def test_cross_overlap_of_identical_and_orthogonal_patches():
    a = lora_delta_svd(torch.randn(4, 30, generator=rng(13), dtype=torch.float64),
                       torch.randn(20, 4, generator=rng(14), dtype=torch.float64), 1.0)
    same = cross_overlap(a, a)
    assert same["mso_input"] == pytest.approx(1.0) and same["max_cosine_output"] == pytest.approx(1.0)
    e = torch.eye(30, dtype=torch.float64)
    f = torch.eye(20, dtype=torch.float64)
    b = lora_delta_svd(e[:4], f[:, :4], 1.0)
    c = lora_delta_svd(e[4:8], f[:, 4:8], 1.0)
    assert cross_overlap(b, c)["mso_input"] == pytest.approx(0.0, abs=1e-12)
