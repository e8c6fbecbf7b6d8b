"""Subspace geometry of a weight update ΔW against its base weight W0 (PAPER.md section 5, FIELD.md c5).

All measures take thin SVD factors, ΔW = U_Δ diag(S_Δ) V_Δᵀ and W0's top-k singular vectors, so a LoRA update never
has to be formed: :func:`lora_delta_svd` gets its exact SVD from QR of B and Aᵀ and the SVD of an r x r core.

Measures (input side = right singular vectors, the paper's choice; output side = left):
- ``paper_similarity``: max |entry| of V_Δ,rᵀ V_0,k (Mou et al.; k = r by default);
- ``principal_cosines`` / ``mso``: cosines of the principal angles and their mean square (CERT-Lab's MSO);
- ``projection_energy``: the fraction of ‖ΔW‖²_F inside W0's top-k singular subspace;
each with the value expected for a random subspace of the same size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Factors:
    """Thin SVD ΔW = U diag(S) Vᵀ with singular values in descending order."""

    U: torch.Tensor  # d_out x k
    S: torch.Tensor  # k
    V: torch.Tensor  # d_in x k

    def dense(self) -> torch.Tensor:
        return (self.U * self.S) @ self.V.T

    def truncate(self, k: int) -> Factors:
        return Factors(self.U[:, :k], self.S[:k], self.V[:, :k])


def lora_delta_svd(A: torch.Tensor, B: torch.Tensor, scale: float) -> Factors:
    """Exact SVD of ΔW = scale·B·A (A: r x d_in, B: d_out x r) in O((d_in + d_out)·r²), never forming ΔW."""
    A, B = A.double(), B.double()
    q_b, r_b = torch.linalg.qr(B)
    q_a, r_a = torch.linalg.qr(A.T)
    u_c, s, vh_c = torch.linalg.svd(scale * r_b @ r_a.T)
    return Factors(q_b @ u_c, s, q_a @ vh_c.T)


def dense_svd(W: torch.Tensor) -> Factors:
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    return Factors(U, S, Vh.T)


def top_singular(W: torch.Tensor, k: int, *, exact_below: int = 2048, niter: int = 6, seed: int = 0) -> Factors:
    """W's top-k singular triplets: exact SVD for small matrices, randomized (torch.svd_lowrank) for large ones."""
    k = min(k, *W.shape)
    if min(W.shape) <= exact_below:
        return dense_svd(W).truncate(k)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        U, S, V = torch.svd_lowrank(W.double(), q=min(k + 16, *W.shape), niter=niter)
    finally:
        torch.random.set_rng_state(generator_state)
    return Factors(U[:, :k], S[:k], V[:, :k])


def orthonormal(M: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(M.double())[0]


def principal_cosines(Q1: torch.Tensor, Q2: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between span(Q1) and span(Q2) (orthonormal columns), descending."""
    return torch.linalg.svdvals(Q1.T.double() @ Q2.double()).clamp(0.0, 1.0)


def mso(Q1: torch.Tensor, Q2: torch.Tensor) -> float:
    """Mean squared principal-angle cosine ‖Q1ᵀQ2‖²_F / min(k1, k2): 1 = nested, 0 = orthogonal."""
    value = float((Q1.T.double() @ Q2.double()).pow(2).sum() / min(Q1.shape[1], Q2.shape[1]))
    return min(value, 1.0)  # nested subspaces can round to 1 + 2e-16


def mso_random_baseline(k1: int, k2: int, d: int) -> float:
    """E[MSO] for uniformly random subspaces: E‖Q1ᵀQ2‖²_F = k1·k2/d, divided by min(k1, k2)."""
    return max(k1, k2) / d


def paper_similarity(V_delta: torch.Tensor, V_base: torch.Tensor) -> float:
    """Mou et al.'s measure: the largest |entry| of V_Δᵀ V_0 (both with orthonormal columns)."""
    return float((V_delta.T.double() @ V_base.double()).abs().max())


def projection_energy(S: torch.Tensor, Q_delta: torch.Tensor, Q_base: torch.Tensor) -> float:
    """Fraction of ‖ΔW‖²_F inside span(Q_base), where ΔW = (Q_delta · diag(S)) on the side being measured."""
    inside = (Q_base.T.double() @ (Q_delta.double() * S.double())).pow(2).sum()
    return float(inside / S.double().pow(2).sum())


def energy_random_baseline(k: int, d: int) -> float:
    """E[fraction of a random direction's energy inside a fixed k-dim subspace of R^d] = k/d."""
    return k / d


def random_frame(d: int, k: int, generator: torch.Generator) -> torch.Tensor:
    return orthonormal(torch.randn(d, k, generator=generator, dtype=torch.float64))


def empirical_baselines(d: int, r: int, k: int, samples: int = 32, seed: int = 0) -> dict[str, float]:
    """Mean of each measure for random r-dim subspaces against a fixed k-dim one in R^d (rotation invariance lets
    the fixed one be the first k coordinate axes)."""
    generator = torch.Generator().manual_seed(seed)
    fixed = torch.eye(d, k, dtype=torch.float64)
    sims, msos, energies = [], [], []
    for _ in range(samples):
        frame = random_frame(d, r, generator)
        sims.append(paper_similarity(frame, fixed))
        msos.append(mso(frame, fixed))
        energies.append(projection_energy(torch.ones(r, dtype=torch.float64), frame, fixed))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"paper_similarity": mean(sims), "mso": mean(msos), "projection_energy": mean(energies)}


def magnitudes(S: torch.Tensor, base_fro: float, rank_tol: float = 1e-3) -> dict[str, float]:
    """‖ΔW‖_F, ‖ΔW‖_2, ‖ΔW‖_F/‖W0‖_F, stable rank, and the count of singular values above rank_tol·σ_max."""
    S = S.double()
    fro = float(S.pow(2).sum().sqrt())
    spectral = float(S.max()) if S.numel() else 0.0
    return {
        "fro": fro,
        "spectral": spectral,
        "relative_fro": fro / base_fro if base_fro else float("nan"),
        "stable_rank": fro**2 / spectral**2 if spectral else 0.0,
        "significant_singular_values": int((rank_tol * spectral < S).sum()) if spectral else 0,
    }


def module_geometry(base: Factors, base_fro: float, delta: Factors, r: int, ks: list[int],
                    baselines: bool = True) -> dict:
    """Every weight-space measure for one module: ΔW (all its components) against W0's top-k subspaces.

    ``r`` is the number of ΔW directions compared by the paper's measure and MSO (the LoRA rank; the paper truncates
    a full fine-tuning update to the same r). Projection energy uses every component of ΔW. W0's smaller top-k
    subspaces are column prefixes of the largest, so each side needs one product ΔW-factorsᵀ·W0-factors (small:
    components x k); every measure and every k reads it.
    """
    d_out, d_in = base.U.shape[0], base.V.shape[0]
    r = min(r, delta.S.numel())
    k_max = min(max(ks), base.S.numel())
    S = delta.S.double()
    total = S.pow(2).sum()
    cross = {"input": delta.V.T.double() @ base.V[:, :k_max].double(),
             "output": delta.U.T.double() @ base.U[:, :k_max].double()}
    out: dict = {"shape": [d_out, d_in], "r": r, **magnitudes(delta.S, base_fro), "k": {}}
    for k in ks:
        k = min(k, base.S.numel())
        row: dict = {}
        for side, C in cross.items():
            top = C[:r, :k]
            cosines = torch.linalg.svdvals(top).clamp(0.0, 1.0).tolist()
            if side == "input":
                row["paper_similarity"] = float(top.abs().max())
                row["max_cosine_input"] = cosines[0]
            row[f"mso_{side}"] = float(top.pow(2).sum() / min(r, k))
            row[f"cosines_{side}"] = [round(c, 6) for c in cosines]
            row[f"energy_{side}"] = float((C[:, :k] * S[:, None]).pow(2).sum() / total)
        if baselines:
            row["random"] = {
                "mso_input": mso_random_baseline(r, k, d_in),
                "mso_output": mso_random_baseline(r, k, d_out),
                "energy_input": energy_random_baseline(k, d_in),
                "energy_output": energy_random_baseline(k, d_out),
            }
        out["k"][str(k)] = row
    return out


def cross_overlap(a: Factors, b: Factors, r: int | None = None) -> dict[str, float]:
    """Overlap of two updates' subspaces (stacked or successive patches): MSO and largest cosine, both sides."""
    ra = min(r or a.S.numel(), a.S.numel())
    rb = min(r or b.S.numel(), b.S.numel())
    return {
        "mso_input": mso(a.V[:, :ra], b.V[:, :rb]),
        "mso_output": mso(a.U[:, :ra], b.U[:, :rb]),
        "max_cosine_input": float(principal_cosines(a.V[:, :ra], b.V[:, :rb])[0]),
        "max_cosine_output": float(principal_cosines(a.U[:, :ra], b.U[:, :rb])[0]),
        "random_mso_input": mso_random_baseline(ra, rb, a.V.shape[0]),
        "random_mso_output": mso_random_baseline(ra, rb, a.U.shape[0]),
    }


def mean_or_nan(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def pairwise_overlap(factors: dict[str, dict[str, Factors]], rank: int) -> dict[str, dict[str, float]]:
    """Cross-target overlap (stacked or successive patches): per pair, the mean over shared modules of MSO and the
    largest principal cosine between the two updates' top-r subspaces, with the random-subspace MSO."""
    labels = list(factors)
    out = {}
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            shared = sorted(set(factors[a]) & set(factors[b]))
            rows = [cross_overlap(factors[a][m], factors[b][m], rank) for m in shared]
            if rows:
                out[f"{a} vs {b}"] = {key: mean_or_nan([row[key] for row in rows]) for key in rows[0]} | \
                    {"n_modules": len(rows)}
    return out
