#!/usr/bin/env bash
# One-off checks on the embedded demo models; every line works offline after `make install data`.
set -euo pipefail
notes=$(mktemp --suffix=.txt); python examples/make_notes.py > "$notes"

# Exact 50% sparsity, per-matrix table on stderr.
jdna prune minilm-l6 --sparsity 0.5 | jdna info --summary

# Calibrated methods (small calibration set for a CPU): Wanda per row, SparseGPT with 2:4.
jdna prune smollm2-135m --sparsity 0.5 --method wanda --calib "$notes" --calib-samples 16 --calib-seqlen 256 | jdna info --summary
jdna prune smollm2-135m --pattern 2:4 --method sparsegpt --calib "$notes" --calib-samples 16 --calib-seqlen 256 | jdna info --summary

# Pruned vs dense on a multiple-choice task with fewer options (easier) and more (harder).
for options in 2 4; do
  jdna eval smollm2-135m --task bigbench:general_knowledge --options "$options"
  jdna prune smollm2-135m --sparsity 0.5 | jdna eval --task bigbench:general_knowledge --options "$options"
done | jdna difficulty

# Quantization and low-rank on the same axis (bits per weight).
jdna quantize smollm2-135m --bits 4 --method rtn | jdna eval --task bigbench:general_knowledge --options 4
jdna lowrank minilm-l6 --rank-ratio 0.5 | jdna info --summary
