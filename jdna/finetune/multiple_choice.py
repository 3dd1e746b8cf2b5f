"""Fine-tuning a multiple-choice head on an encoder (transformers' AutoModelForMultipleChoice).

The head's data, loss and scoring live in `jdna.evaluation.mc_head`, because `jdna eval` scores such an
artifact with the same function the fine-tuning run validates with; the training loop uses `MCEncoded` as
its `TrainData`. The names are re-exported here for fine-tuning's callers.
"""

from jdna.evaluation.mc_head import (
    HEAD_TYPE,
    OBJECTIVE,
    MCEncoded,
    encode_items,
    first_segment,
    head_spec,
    is_head_model,
    option_logits,
    score_items,
)

__all__ = [
    "HEAD_TYPE",
    "OBJECTIVE",
    "MCEncoded",
    "encode_items",
    "first_segment",
    "head_spec",
    "is_head_model",
    "option_logits",
    "score_items",
]
