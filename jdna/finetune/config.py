"""What a fine-tuning run is asked to do: the modes, every knob (`FinetuneConfig`), their validation (`plan`,
`check_model`) and the step's parameters as they enter the content address (`operation_params`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from jdna.distributed import launched_world_size
from jdna.errors import JdnaError, unknown_name_error
from jdna.finetune.lm import LM_PROTOCOL, OBJECTIVE
from jdna.finetune.masking import require_masks
from jdna.models import ModelRef

MODES = ("dense", "sparse", "freeze", "regrow")
MODE_HELP = {
    "dense": "the unpruned model (the chain without its pruning steps), trained normally",
    "sparse": "pruned weights stay exactly zero (gradients, weights and Adam moments masked)",
    "freeze": "pruned positions keep their pretrained values and never change",
    "regrow": "pruned weights start at zero and are trainable",
}
ENCODER_LR = 5e-5
CAUSAL_LM_LR = 1e-4
NEEDS_MASK = ("sparse", "freeze")


@dataclass
class FinetuneConfig:
    """Every knob of a fine-tuning run. `lr=None` means 5e-5 for encoders, 1e-4 for causal LMs.

    Without `train_fraction` and `train_examples` the whole train pool is used.
    """

    task: str = ""
    mode: str = "sparse"
    train_fraction: float | None = None
    train_examples: int | None = None
    epochs: int = 3
    lr: float | None = None
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 128
    warmup: float = 0.06
    weight_decay: float = 0.01
    seed: int = 0
    eval_limit: int | None = 1000
    checkpoint_every: int = 100


def plan(config: FinetuneConfig) -> FinetuneConfig:
    """Validate the flags (no model, no data touched); returns the config. Bad values raise JdnaError."""
    if not config.task:
        raise JdnaError("no task given: pass --task, e.g. --task bigbench:vitaminc_fact_verification")
    if config.mode not in MODES:
        raise unknown_name_error("mode", config.mode, MODES)
    if config.train_fraction is not None and config.train_examples is not None:
        raise JdnaError("give --train-fraction or --train-examples, not both")
    if config.train_fraction is not None and not 0.0 < config.train_fraction <= 1.0:
        raise JdnaError(f"--train-fraction {config.train_fraction} is outside (0, 1]: use e.g. 0.1")
    if config.train_examples is not None and config.train_examples < 1:
        raise JdnaError(f"--train-examples {config.train_examples} is below 1: use at least 1")
    checks = [
        (config.epochs >= 1, f"--epochs {config.epochs} is below 1"),
        (config.lr is None or 0 < config.lr <= 1, f"--lr {config.lr} is outside (0, 1]: use e.g. 5e-5"),
        (config.batch_size >= 1, f"--batch-size {config.batch_size} is below 1"),
        (config.grad_accum >= 1, f"--grad-accum {config.grad_accum} is below 1"),
        (config.max_length >= 2, f"--max-length {config.max_length} is below 2"),
        (0.0 <= config.warmup < 1.0, f"--warmup {config.warmup} is outside [0, 1) (a fraction of the steps)"),
        (0.0 <= config.weight_decay <= 1.0, f"--weight-decay {config.weight_decay} is outside [0, 1]: use e.g. 0.01"),
        (config.seed >= 0, f"--seed {config.seed} is negative: use 0 or more"),
        (config.eval_limit is None or config.eval_limit >= 1, f"--eval-limit {config.eval_limit} is below 1"),
        (config.checkpoint_every >= 1, f"--checkpoint-every {config.checkpoint_every} is below 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise JdnaError(message)
    world = launched_world_size()
    if world > config.batch_size:
        raise JdnaError(
            f"--batch-size {config.batch_size} is smaller than the {world} processes launched: --batch-size is the "
            f"micro-batch over all processes, so use --batch-size {world} or more (or fewer processes)"
        )
    return config


def check_model(ref: ModelRef, config: FinetuneConfig) -> None:
    """Checks that need the model reference but not its weights: masks for sparse/freeze."""
    if config.mode in NEEDS_MASK:
        require_masks(ref, config.mode)


def operation_params(
    config: FinetuneConfig, family: str, n_train: int, objective: str = "classification"
) -> dict[str, Any]:
    """The step's parameters as recorded (and hashed into the id): defaults resolved."""
    params = asdict(config)
    params.pop("checkpoint_every")
    params["lr"] = config.lr if config.lr is not None else (CAUSAL_LM_LR if family == "causal_lm" else ENCODER_LR)
    params["train_examples_used"] = n_train
    if objective != "classification":  # (classification ids stay as they were)
        params["objective"] = objective
        if objective == OBJECTIVE:
            params["lm_protocol"] = LM_PROTOCOL
    return params
