"""Which weights a compression step touches, and how they group into transformer blocks.

By default: the weight matrices of the nn.Linear layers inside the transformer blocks. Embeddings, the LM
head or classifier, the pooler, norms and biases are left alone. ``--include``/``--exclude`` globs on
canonical parameter names (the names without the task-head prefix, e.g. ``layers.0.mlp.up_proj.weight``)
widen or narrow the set.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from jdna.errors import JdnaError
from jdna.naming import canonical_name


@dataclass
class PrunableMatrix:
    name: str  # canonical parameter name
    module_name: str  # module path in this model instance
    module: nn.Module
    param: nn.Parameter
    block: int | None  # index of the transformer block that holds it

    @property
    def numel(self) -> int:
        return self.param.numel()

    @property
    def is_linear(self) -> bool:
        return isinstance(self.module, nn.Linear) and self.param is self.module.weight


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks (e.g. ``model.layers`` or ``encoder.layer``)."""
    config = getattr(model, "config", None)
    expected = None
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        expected = getattr(config, attr, None) or expected
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if expected is not None and len(module) != expected:
                continue
            if best is None or name.count(".") < best[0].count("."):
                best = (name, module)
    if best is None:
        raise JdnaError(f"could not find the transformer blocks of {type(model).__name__}")
    return best


def prunable_matrices(
    model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[PrunableMatrix]:
    """The matrices to compress, in model order (which also fixes the tie-breaking order)."""
    blocks_path, blocks = find_blocks(model)
    block_of: dict[str, int] = {}
    for index, _ in enumerate(blocks):
        block_of[f"{blocks_path}.{index}"] = index

    def block_for(module_name: str) -> int | None:
        for prefix, index in block_of.items():
            if module_name == prefix or module_name.startswith(prefix + "."):
                return index
        return None

    owners: dict[int, tuple[str, nn.Module]] = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), (module_name, module))
            del param_name

    selected: list[PrunableMatrix] = []
    for full_name, param in model.named_parameters():
        module_name, module = owners[id(param)]
        name = canonical_name(model, full_name)
        default = (
            isinstance(module, nn.Linear) and param is module.weight and block_for(module_name) is not None
        )
        if not default and not any(fnmatch.fnmatchcase(name, glob) for glob in include):
            continue
        if param.dim() < 2:
            continue
        if any(fnmatch.fnmatchcase(name, glob) for glob in exclude):
            continue
        selected.append(PrunableMatrix(name, module_name, module, param, block_for(module_name)))

    names = [canonical_name(model, n) for n, _ in model.named_parameters()]
    for flag, globs in (("--include", include), ("--exclude", exclude)):
        for glob in globs:
            if not any(fnmatch.fnmatchcase(n, glob) for n in names):
                example = selected[0].name if selected else names[0]
                raise JdnaError(f"{flag} '{glob}' matches no parameter; names look like '{example}'")
    if not selected:
        raise JdnaError("nothing to compress: the include/exclude globs leave no weight matrix")
    return selected
