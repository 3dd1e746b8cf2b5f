"""Transfer fine-tuning of (pruned) models: dense, sparse, freeze and regrow, with checked invariants.

`run_finetune(ref, config)` trains the whole model on a task, enforces the mode's mask rules
(`jdna.finetune.masking`), checks the mode's invariant at the end (a violation is an error), evaluates the
task's evaluation pool, and writes

- a ``finetuned`` artifact (all parameters + the keep-masks for sparse/freeze) whose parent is the input, and
- an ``eval`` record (``runs/eval/<id[:20]>.json``) whose ``transfer`` names the mode,

and returns the stdout record. Interrupted runs leave a checkpoint beside the output and resume from it.

Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1) the processes train data-parallel
(`jdna.distributed`): ``--batch-size`` stays the global micro-batch, each process trains on its shard of
it, gradients are summed, and the run is the same training as on one process (same steps, same content
address). After training every process checks the mode's invariant and the replicas are compared by sha256;
then rank 0 alone validates, writes the artifact and the eval record, and returns the record, which the other
processes receive once it is written.

What is trained depends on the task (`load_finetune_task`):

- classification tasks (and BIG-bench multiple-choice tasks whose every example offers the same options,
  loaded as classification) train a sequence-classification head, on an encoder or a causal LM;
- multiple-choice tasks on an encoder train a multiple-choice head (`jdna.finetune.multiple_choice`,
  transformers' AutoModelForMultipleChoice: a score per (question, option) pair, softmax over the options),
  validated by the scorer `jdna eval` uses for such artifacts;
- multiple-choice and QA (generation) tasks on a causal LM train its own head on the answer tokens
  (`jdna.finetune.lm`): the prompt `jdna eval` scores plus the gold answer, loss on the answer only. The
  validation pass is `jdna eval`'s own evaluator (log-likelihood accuracy, EM/F1) on the items `jdna eval
  --task T --limit N --seed S` would score, with the model still in memory.

Training data is the task's train pool, evaluation its evaluation pool; the two are disjoint by construction
(sources without a train split, such as BIG-bench, carve one by a seeded hash: `jdna.tasks.carve_split`), so
validation items are never trained on. The record says how the split was made (`split`).

The package, by responsibility: `config` (modes, knobs, their checks, the step's parameters), `items` (the
task, training subset, validation items, split record, head), `step` (the step: plan, train, validate,
measure, write), `validation` (the validation pass and its eval record, built by jdna.evaluation.records),
`distributed` (checks across data-parallel replicas), `transfer` (the step `jdna eval` runs for a
classification task without a head), and the training machinery: `data`, `loop`, `masking`, `checkpoint`,
`lm` (a causal LM's answer tokens), `multiple_choice` (an encoder's multiple-choice head), `evaluate`.
"""

from __future__ import annotations

from jdna.finetune.config import (
    CAUSAL_LM_LR,
    ENCODER_LR,
    MODE_HELP,
    MODES,
    NEEDS_MASK,
    FinetuneConfig,
    check_model,
    operation_params,
    plan,
)
from jdna.finetune.items import (
    evaluation_items,
    head_for,
    load_classification_task,
    load_finetune_task,
    split_summary,
    training_items,
)
from jdna.finetune.loop import Interrupted
from jdna.finetune.masking import MaskEnforcer
from jdna.finetune.step import finetune_record, quiet_transformers, resolve_model, run_finetune, seed_everything
from jdna.finetune.transfer import EvalTransfer
from jdna.finetune.validation import Validation, eval_knobs, eval_location

__all__ = [
    "CAUSAL_LM_LR",
    "ENCODER_LR",
    "MODES",
    "MODE_HELP",
    "NEEDS_MASK",
    "EvalTransfer",
    "FinetuneConfig",
    "Interrupted",
    "MaskEnforcer",
    "Validation",
    "check_model",
    "eval_knobs",
    "eval_location",
    "evaluation_items",
    "finetune_record",
    "head_for",
    "load_classification_task",
    "load_finetune_task",
    "operation_params",
    "plan",
    "quiet_transformers",
    "resolve_model",
    "run_finetune",
    "seed_everything",
    "split_summary",
    "training_items",
]
