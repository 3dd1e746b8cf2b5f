#!/usr/bin/env bash
# The "irreversibly" half: fine-tune a pruned encoder with pruned weights held at zero, then compare with
# dense transfer and sparse-to-dense regrowth, and draw the transfer-settings figure.
set -euo pipefail
task=bigbench:vitaminc_fact_verification
flags="--train-examples 500 --epochs 1 --max-length 64 --eval-limit 300"
{
  jdna finetune minilm-l6 --task $task --mode dense $flags
  for mode in sparse freeze regrow; do
    jdna prune minilm-l6 --sparsity 0.5 | jdna finetune --task $task --mode $mode $flags
  done
} > transfer.jsonl
jdna plot transfer.jsonl --kind transfer -o transfer.png --force
