"""The transfer step `jdna eval` runs before scoring a classification task on a model without a head for it.

Evaluation sits below fine-tuning, so it never imports this: `jdna eval` (the command layer) hands an
`EvalTransfer` to `jdna.evaluation.run_evals`, which calls it through the `jdna.evaluation.base.Transfer`
protocol. The fine-tuning run is the task's protocol with jdna finetune's defaults and eval's training-set
knobs and seed, so its artifact is the one `jdna finetune` with the same flags makes.
"""

from __future__ import annotations

from typing import Any

from jdna.evaluation.base import EvalConfig
from jdna.finetune.config import FinetuneConfig, check_model, plan
from jdna.finetune.step import run_finetune
from jdna.models import ModelRef
from jdna.progress import Reporter


def finetune_config_for(config: EvalConfig, mode: str) -> FinetuneConfig:
    """The fine-tuning run an evaluation asks for: its task, transfer mode, training-set knobs and seed."""
    return FinetuneConfig(
        task=config.task,
        mode=mode,
        train_fraction=config.train_fraction,
        train_examples=config.train_examples,
        seed=config.seed,
    )


class EvalTransfer:
    """`jdna.evaluation.base.Transfer` by fine-tuning (`run_finetune`)."""

    def check(self, ref: ModelRef, config: EvalConfig, mode: str) -> None:
        finetune_config = finetune_config_for(config, mode)
        plan(finetune_config)  # the engine's own flag checks
        check_model(ref, finetune_config)  # and its model checks (masks for sparse/freeze), before any weights

    def run(self, ref: ModelRef, config: EvalConfig, mode: str, reporter: Reporter) -> dict[str, Any]:
        return run_finetune(ref, finetune_config_for(config, mode), reporter=reporter)
