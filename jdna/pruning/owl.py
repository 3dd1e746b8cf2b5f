"""OWL (Yin et al. 2024): outlier-weighted layerwise sparsity.

Blocks holding more outlier scores (score > M · the block's mean score) are pruned less. With D_l the
outlier ratio of block l, the ratios are min-max scaled to [0, 2λ], re-centred so their mean is the target
density 1 − S, and block l gets sparsity 1 − that value: block sparsities span 2λ, average S, and for
blocks of equal size the overall sparsity stays S.

The outlier ratios come from the Wanda metric |W|·‖X‖ on the dense model by default, as the reference OWL code
computes them for every pruning method (magnitude and SparseGPT included), so OWL needs calibration data even with
magnitude; ``weight`` counts outliers of |W| alone (no activations; not the reference).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from jdna.errors import JdnaError
from jdna.prunable import PrunableMatrix
from jdna.pruning.wanda import wanda_scores

# What OWL can count outliers of → the calibration statistic it needs (jdna.layerwise.STATISTICS), or None.
OWL_METRIC_STATISTIC: dict[str, str | None] = {"wanda": "input_norms", "weight": None}
OWL_METRICS = tuple(OWL_METRIC_STATISTIC)


def owl_metric(
    metric: str, statistics: Mapping[str, torch.Tensor]
) -> Callable[[PrunableMatrix], torch.Tensor]:
    """The scores OWL counts outliers of: the Wanda metric |W|·‖X‖ on the dense model (the reference OWL code
    does so whatever the pruning score), or |W| alone for ``weight``; `statistics` holds the input norms."""
    if OWL_METRIC_STATISTIC[metric] is None:
        return lambda matrix: matrix.param.detach().abs().to(torch.float32).cpu()
    return lambda matrix: wanda_scores(matrix.param.detach().cpu(), statistics[matrix.name])


def outlier_ratio(score_fns: Sequence[Callable[[], torch.Tensor]], m: float) -> float:
    """Fraction of a block's scores above m times the block's mean score (two streaming passes)."""
    total = 0.0
    count = 0
    for fn in score_fns:
        scores = fn()
        total += float(scores.to(torch.float64).sum())
        count += scores.numel()
    mean = total / max(count, 1)
    outliers = sum(int((fn() > m * mean).sum()) for fn in score_fns)
    return outliers / max(count, 1)


def owl_sparsities(ratios: Sequence[float], sparsity: float, lam: float) -> list[float]:
    """Per-block sparsities from outlier ratios (the OWL formula)."""
    if not 0 <= lam < 1:
        raise JdnaError("--owl-lambda must be in [0, 1)")
    values = torch.tensor(list(ratios), dtype=torch.float64)
    spread = float(values.max() - values.min()) if values.numel() else 0.0
    if spread == 0:
        return [sparsity] * len(ratios)
    scaled = (values - values.min()) / spread * (2 * lam)
    density = scaled - scaled.mean() + (1 - sparsity)
    out = (1 - density).tolist()
    if min(out) < 0 or max(out) >= 1:
        raise JdnaError(
            f"OWL with lambda {lam} pushes a block's sparsity outside [0, 1) at target {sparsity}: lower --owl-lambda"
        )
    return out
