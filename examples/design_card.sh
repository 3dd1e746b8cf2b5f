#!/usr/bin/env bash
# The design card's one-liner: prune RoBERTa-base to 60% and evaluate on CoLA. The model and GLUE come from
# the Hugging Face hub, so this needs a network (a GPU makes the fine-tuning inside `eval` quick). Because
# roberta-base has no CoLA head, `jdna eval` runs the task's fine-tuning protocol first (sparse transfer).
set -euo pipefail
jdna prune roberta-base --sparsity 0.6 | jdna eval --task cola
