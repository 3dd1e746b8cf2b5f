"""Keep-masks during fine-tuning: where they come from, how each mode enforces them, and the final checks.

Modes (see ``jdna finetune --help``):

- ``sparse``: pruned positions (keep-mask False) stay exactly zero. Gradients are zeroed there before the
  optimizer step; after it the weights *and* the Adam moments are zeroed there again (AdamW's decoupled weight
  decay and stale moments would otherwise move them; the paper's code forgot the moments).
- ``freeze``: pruned positions hold their pretrained (dense) values. Gradients and moments are zeroed there and
  the values are restored bit for bit after every step (decoupled weight decay moves them otherwise).
- ``regrow`` and ``dense``: no masking.

Everything here is a pure function of tensors, so the training loop stays small and the tests can drive it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from jdna.artifact import Artifact
from jdna.errors import JdnaError
from jdna.masks import ended_by, mask_owners, stored_masks
from jdna.models import ModelRef, canonical_parameters


def mask_source(ref: ModelRef) -> Artifact | None:
    """The artifact whose masks are exactly the ones `ref` still obeys, if a single one is (else None)."""
    owners = mask_owners(ref.chain)
    sources = {id(owner): owner for owner in owners.values() if owner is not None}
    if len(sources) != 1:
        return None
    source = next(iter(sources.values()))
    held = {name for name, owner in owners.items() if owner is source}
    return source if held == set(stored_masks(source)) else None


def require_masks(ref: ModelRef, mode: str) -> None:
    """sparse/freeze keep a pruning mask, so `ref` must still obey one; else one clear error.

    A model whose pruned matrices were all rewritten densely after pruning (lowrank factors, a quantization
    without mask, a dense fine-tune) obeys no mask any more: masked fine-tuning refuses rather than re-apply a
    stale mask to dense values (which silently zeroed 30-70% of low-rank weights before).
    """
    if any(owner is not None for owner in mask_owners(ref.chain).values()):  # no need to unpack the masks
        return
    ended = ended_by(ref.chain)
    if ended is None:
        raise JdnaError(f"mode {mode} needs a pruned model: pipe `jdna prune` output or use --mode dense")
    raise JdnaError(
        f"mode {mode} needs a pruning mask, but the {ended.kind} step '{ended.path}' rewrote every pruned matrix "
        "densely after pruning, so no mask holds: use --mode dense or regrow, or prune that model again"
    )


def dense_ref(ref: ModelRef) -> ModelRef:
    """`ref` without its pruning: the chain cut before its first ``pruned`` artifact (the dense parent)."""
    for index, artifact in enumerate(ref.chain):
        if artifact.kind == "pruned":
            return ModelRef(base=ref.base, chain=ref.chain[:index])
    return ref


@dataclass
class MaskedParameter:
    """One masked parameter: the tensor, its masks and, for freeze, the frozen pretrained values.

    `keep` is the keep-mask in the parameter's dtype (multiplying by it is ~10x faster than masked_fill_ on
    CPU); `frozen_dropped` holds the pretrained values at pruned positions and zeros elsewhere, so
    ``param * keep + frozen_dropped`` restores them; `exact` marks a parameter whose pretrained values at pruned
    positions include -0.0, which that sum would turn into +0.0, so it is restored with torch.where instead.
    """

    name: str
    param: nn.Parameter
    drop: torch.Tensor  # bool, True = pruned
    keep: torch.Tensor  # param dtype, 1 = kept
    frozen_dropped: torch.Tensor | None = None
    exact: bool = False


@dataclass
class MaskEnforcer:
    """Applies a mode's mask rules to a model and its optimizer; `mode` is sparse, freeze, regrow or dense."""

    mode: str
    entries: list[MaskedParameter] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.mode in ("sparse", "freeze") and bool(self.entries)

    @classmethod
    def build(cls, model: nn.Module, masks: dict[str, torch.Tensor], mode: str) -> MaskEnforcer:
        """Attach `masks` (keep-masks by canonical name) to `model`'s parameters for `mode`.

        freeze records the current values as the frozen ones, so call it on the dense (pretrained) model.
        """
        enforcer = cls(mode=mode)
        if mode not in ("sparse", "freeze"):
            return enforcer
        params = canonical_parameters(model)
        for name, keep in masks.items():
            if name not in params:
                raise JdnaError(f"the model's mask names '{name}', which this model does not have")
            param = params[name]
            if tuple(keep.shape) != tuple(param.shape):
                raise JdnaError(
                    f"the mask of '{name}' has shape {tuple(keep.shape)} but the parameter {tuple(param.shape)}"
                )
            keep_bool = keep.bool().to(param.device)
            drop = ~keep_bool
            entry = MaskedParameter(name, param, drop, keep_bool.to(param.dtype))
            if mode == "freeze":
                frozen = param.detach()
                entry.frozen_dropped = torch.where(drop, frozen, torch.zeros((), dtype=frozen.dtype))
                dropped = frozen[drop]
                entry.exact = bool(((dropped == 0) & torch.signbit(dropped)).any())
            enforcer.entries.append(entry)
        enforcer.enforce_weights()
        return enforcer

    @torch.no_grad()
    def enforce_weights(self) -> None:
        """Put the pruned positions back: zeros (sparse) or the frozen pretrained values (freeze)."""
        if not self.active:
            return
        if self.mode == "sparse":
            torch._foreach_mul_([e.param.data for e in self.entries], [e.keep for e in self.entries])
            return
        fast = [e for e in self.entries if not e.exact]
        if fast:
            params = [e.param.data for e in fast]
            torch._foreach_mul_(params, [e.keep for e in fast])
            torch._foreach_add_(params, [e.frozen_dropped for e in fast])  # type: ignore[misc]
        for entry in self.entries:
            if entry.exact:
                assert entry.frozen_dropped is not None
                entry.param.data.copy_(torch.where(entry.drop, entry.frozen_dropped, entry.param.data))

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients at pruned positions (before the optimizer step)."""
        if not self.active:
            return
        pairs = [(e.param.grad, e.keep) for e in self.entries if e.param.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [k for _, k in pairs])

    @torch.no_grad()
    def mask_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero every per-element optimizer state (Adam's exp_avg, exp_avg_sq, ...) at pruned positions."""
        if not self.active:
            return
        tensors, keeps = [], []
        for entry in self.entries:
            for value in optimizer.state.get(entry.param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == entry.param.shape:
                    tensors.append(value)
                    keeps.append(entry.keep if value.dtype == entry.keep.dtype else entry.keep.to(value.dtype))
        if tensors:
            torch._foreach_mul_(tensors, keeps)

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """What follows every optimizer step: weights and optimizer state back under the mask."""
        self.enforce_weights()
        self.mask_optimizer_state(optimizer)

    @torch.no_grad()
    def check(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
        """The mode's invariant, measured: exact zeros (sparse) or bit-identical frozen values (freeze).

        Returns ``{"checked": ..., "passed": bool, "violations": n, "positions": n, ...}``; Adam moments at
        pruned positions are checked too when `optimizer` is given.
        """
        if self.mode == "sparse":
            checked = "exact_zeros"
        elif self.mode == "freeze":
            checked = "frozen_values"
        else:
            return {"checked": None, "passed": True}
        positions = violations = state_violations = 0
        worst: str | None = None
        for entry in self.entries:
            values = entry.param.detach()[entry.drop]
            positions += values.numel()
            if self.mode == "sparse":
                bad = int((values != 0).sum())
            else:
                assert entry.frozen_dropped is not None
                expected = entry.frozen_dropped[entry.drop]
                bad = int((_bits(values) != _bits(expected)).sum())
            if bad and worst is None:
                worst = entry.name
            violations += bad
            if optimizer is not None:
                for value in optimizer.state.get(entry.param, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == entry.param.shape:
                        state_violations += int((value[entry.drop] != 0).sum())
        result: dict[str, Any] = {
            "checked": checked,
            "passed": violations == 0 and state_violations == 0,
            "positions": positions,
            "violations": violations,
        }
        if optimizer is not None:
            result["optimizer_state_violations"] = state_violations
        if worst is not None:
            result["first_violation"] = worst
        return result


def _bits(values: torch.Tensor) -> torch.Tensor:
    """The raw bit patterns of a float tensor, so -0.0 and 0.0 (and NaN payloads) compare as different."""
    integer = {2: torch.int16, 4: torch.int32, 8: torch.int64}[values.element_size()]
    return values.contiguous().view(integer)


def zero_statistics(model: nn.Module, names: Iterable[str]) -> dict[str, Any]:
    """Measured exact zeros over the named parameters: overall and per matrix (as `jdna info` shows them)."""
    params = canonical_parameters(model)
    zeros = total = 0
    matrices = []
    for name in names:
        param = params[name].detach()
        count = int((param == 0).sum())
        matrices.append(
            {
                "name": name,
                "shape": list(param.shape),
                "numel": param.numel(),
                "pruned": count,
                "sparsity": count / param.numel(),
            }
        )
        zeros += count
        total += param.numel()
    return {
        "sparsity": zeros / total if total else 0.0,
        "prunable_params": total,
        "pruned_params": zeros,
        "matrices": matrices,
    }
