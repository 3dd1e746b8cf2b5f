"""The task as fine-tuning sees it: which task is loaded, the training subset, the validation items, the
record of how the two pools were split, and the classification head a task needs."""

from __future__ import annotations

from typing import Any

from jdna.errors import JdnaError
from jdna.evaluation.classifier import is_regression
from jdna.finetune.config import FinetuneConfig
from jdna.finetune.lm import training_pool_items as lm_training_items
from jdna.io import sha256_text
from jdna.tasks import Item, Task, load_task, parse_spec, subsample_train
from jdna.tasks.base import hash_rank


def _check_pools(task: Task, spec: str) -> Task:
    if not task.train_items:
        raise JdnaError(f"task {spec} has no training items to fine-tune on")
    if not task.items:
        raise JdnaError(f"task {spec} has no evaluation items")
    return task


def load_finetune_task(spec: str) -> Task:
    """The task as finetune trains it: classification if it is one (BIG-bench multiple-choice tasks with one
    fixed option set are converted, as before), else as loaded (multiple choice, generation)."""
    if parse_spec(spec)[0] == "bigbench":
        try:
            return _check_pools(load_task(spec, as_kind="classification"), spec)
        except JdnaError:
            pass  # not a fixed-label task: trained on a causal LM's answer tokens, or an error below
    task = load_task(spec)
    if task.kind == "perplexity":
        raise JdnaError(
            f"task {spec} is a perplexity task, which has nothing to fine-tune towards: use a classification, "
            "multiple-choice or QA task"
        )
    return _check_pools(task, spec)


def load_classification_task(spec: str) -> Task:
    """Load `spec` as a classification task (BIG-bench fixed-label tasks are converted), else a clear error."""
    task = load_finetune_task(spec)
    if task.kind != "classification":
        raise JdnaError(
            f"task {spec} is a {task.kind} task, not a classification task (e.g. bigbench:vitaminc_fact_verification, "
            "sst2, or a file: task with labels): it is fine-tuned on a causal LM's answer tokens, not with a "
            "classification head"
        )
    return task


def training_items(task: Task, config: FinetuneConfig) -> list[Item]:
    """The seeded training subset the config asks for: label-stratified for classification (multiple choice:
    see `jdna.finetune.lm.training_pool_items`)."""
    pool = task.train_items
    if config.train_examples is not None and config.train_examples > len(pool):
        carved = ""
        if "carved" in task.provenance:
            carved = " (carved from a task without a train split; the other items are validation items)"
        raise JdnaError(
            f"--train-examples {config.train_examples} but the training pool of {task.name} has only "
            f"{len(pool)} items{carved}: use --train-examples {len(pool)} or fewer"
        )
    if task.kind != "classification":
        return lm_training_items(task, config.train_examples, config.train_fraction, config.seed)
    if config.train_examples is not None:
        return subsample_train(pool, n=config.train_examples, seed=config.seed)
    if config.train_fraction is not None and config.train_fraction < 1.0:
        return subsample_train(pool, fraction=config.train_fraction, seed=config.seed)
    return list(pool)


def split_summary(task: Task, train: list[Item], evaluated: list[Item]) -> dict[str, Any]:
    """How the task's pools were made and which items were used: counts, the loader's provenance, and
    sha256 digests of the sorted ids (the eval record lists the evaluated ids and the trained ones)."""
    trained, validated = {item.id for item in train}, {item.id for item in evaluated}
    overlap = trained & validated
    if overlap:  # the pools are disjoint by construction; this guards the guarantee, not the user's input
        raise JdnaError(f"item '{sorted(overlap)[0]}' of {task.name} is in both the training and validation sets")
    return {
        "train_pool": len(task.train_items),
        "validation_pool": len(task.items),
        "train_used": len(train),
        "validation_used": len(evaluated),
        "provenance": task.provenance,
        "train_ids_sha256": sha256_text("\n".join(sorted(trained))),
        "validation_ids_sha256": sha256_text("\n".join(sorted(validated))),
    }


def evaluation_items(task: Task, limit: int | None) -> list[Item]:
    """The evaluation pool, or a seeded hash-ranked subset of `limit` items kept in task order."""
    if limit is None or limit >= len(task.items):
        return list(task.items)
    chosen = {item.id for item in hash_rank(task.items, 0, "eval-limit")[:limit]}
    return [item for item in task.items if item.id in chosen]


def head_for(task: Task) -> dict[str, Any]:
    """The sequence-classification head a task needs (regression: one output, MSE)."""
    if is_regression(task):
        return {"type": "sequence_classification", "num_labels": 1, "labels": None, "problem_type": "regression"}
    labels = list(task.labels or [])
    return {
        "type": "sequence_classification",
        "num_labels": len(labels),
        "labels": labels,
        "problem_type": "single_label_classification",
    }
