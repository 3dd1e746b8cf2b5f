"""SparseGPT (Frantar & Alistarh 2023): choose masks column block by column block and update the kept
weights to compensate, using the inverse of the layer's input Hessian H = 2/n Σ x xᵀ.

Differences from the reference, on purpose: the number pruned is exact (per block, with the rounding
carried so the matrix total is round(sparsity · numel)) and ties break by position.

As the reference: an input that is never active (Hessian diagonal 0, e.g. a feature the calibration text never
excites) gets H[i, i] = 1 and its weights W[:, i] are zeroed before any selection, so they have saliency 0,
are pruned first and count toward the pruning budget (the remaining budget goes to live weights).
"""

from __future__ import annotations

import torch

from jdna.errors import JdnaError
from jdna.pruning.base import METHODS, ReconstructionMethod
from jdna.pruning.selection import prune_count


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = damp · mean(diag H); dead inputs get unit diagonal."""
    h = hessian.to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    cols = h.shape[0]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype, device=h.device)
    try:
        lower = torch.linalg.cholesky(h)
    except torch.linalg.LinAlgError:
        raise JdnaError("the calibration Hessian is not positive definite: raise --damp (e.g. 0.1)") from None
    inverse = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(inverse, upper=True)


def sparsegpt_prune_matrix(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    scope: str = "layer",
    n_m: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one (rows × cols) weight matrix; returns (new weight, keep mask)."""
    w = weight.detach().to(torch.float64).clone()
    rows, cols = w.shape
    if n_m is not None:
        n, m = n_m
        if cols % m:
            raise JdnaError(
                f"N:M pattern {n}:{m} needs input dimensions divisible by {m}; a matrix has {cols}"
            )
        block_size = max(m, (block_size // m) * m)
    dead = torch.diag(hessian.to(w.device)) == 0
    w[:, dead] = 0  # what the layer never sees costs nothing to drop: these zeros fill the budget first
    u = inverse_hessian_factor(hessian.to(w.device), damp)
    keep = torch.ones(rows, cols, dtype=torch.bool, device=w.device)
    pruned_so_far = 0
    pruned_rows_so_far = 0
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        count = end - start
        block = w[:, start:end].clone()
        quantized = torch.zeros_like(block)
        errors = torch.zeros_like(block)
        u_block = u[start:end, start:end]
        diag = torch.diag(u_block)
        block_keep = torch.ones(rows, count, dtype=torch.bool, device=w.device)
        if n_m is None:
            saliency = block.pow(2) / diag.reshape(1, -1).pow(2)
            if scope == "row":
                target = prune_count(sparsity, end) - pruned_rows_so_far
                pruned_rows_so_far += target
                if target:
                    order = torch.sort(saliency, dim=1, stable=True).indices[:, :target]
                    block_keep.scatter_(1, order, False)
            else:
                # Carrying the rounding makes the matrix total exactly round(sparsity · numel).
                target = prune_count(sparsity, rows * end) - pruned_so_far
                pruned_so_far += target
                if target:
                    order = torch.sort(saliency.reshape(-1), stable=True).indices[:target]
                    block_keep.view(-1)[order] = False
        for i in range(count):
            column = block[:, i]
            d = diag[i]
            if n_m is not None and i % n_m[1] == 0:
                n, m = n_m
                saliency = block[:, i : i + m].pow(2) / diag[i : i + m].reshape(1, -1).pow(2)
                order = torch.sort(saliency, dim=1, stable=True).indices[:, : m - n]
                group = torch.ones(rows, m, dtype=torch.bool, device=w.device)
                group.scatter_(1, order, False)
                block_keep[:, i : i + m] = group
            q = torch.where(block_keep[:, i], column, torch.zeros_like(column))
            quantized[:, i] = q
            error = (column - q) / d
            block[:, i:] -= error.reshape(-1, 1) @ u_block[i, i:].reshape(1, -1)
            errors[:, i] = error
        w[:, start:end] = quantized
        keep[:, start:end] = block_keep
        w[:, end:] -= errors @ u[start:end, end:]
    return w.to(weight.dtype), keep.cpu()


class SparseGPT(ReconstructionMethod):
    name = "sparsegpt"
    description = "OBS-based mask choice with weight reconstruction (calibrated; per matrix)"
    supports_owl = True  # the reference OWL code has a SparseGPT path: per-block sparsities, then SparseGPT

    def reconstruct(
        self,
        weight: torch.Tensor,
        statistic: torch.Tensor,
        sparsity: float,
        scope: str,
        n_m: tuple[int, int] | None,
        block_size: int,
        damp: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return sparsegpt_prune_matrix(
            weight, statistic, sparsity, scope=scope, n_m=n_m, block_size=block_size, damp=damp
        )


METHODS.add("sparsegpt", SparseGPT())
