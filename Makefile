# openvaccine-gnn — `make all` = data → features → train → submit.
PYTHON ?= python
export PYTHONPATH := $(CURDIR)/src:$(PYTHONPATH)
CONFIG ?=
# MEMBERS: the runs `make train` trains, in order (`make help` prints them; the README's "Members" table gives each
# one's CV alone and blended with those before it). On a CPU: default_gatv2_lstm (GATv2 layers + BiLSTM, 17 epochs,
# the best plain member), default_gatv2 (its BiGRU twin, 13 epochs), six pseudo-labelled students, each taught by the
# runs before it, then a second seed of each of the first two; on a GPU eighteen, from the TransformerConv default to
# the same six students. A student must come after its teachers, since the budget goes down the list in order
# (tests/test_configs.py checks both lists). Measured: the CPU pair blends to 0.2367 with make submit's floors, the
# first eight to 0.2307, the ten CPU runs and the two long GPU ones (default_gatv2_e26, default_gatv2_lstm_e34) to
# 0.2292 (reports/experiments.md).
# BUDGET (minutes; CPU only, 0 = none): `train --budget` measures this machine's training and inference speed for
# each kind of member (~12 s a kind; not for members trained and predicted already, which cost nothing) and goes down
# MEMBERS keeping each member whose estimated minutes of training and of make submit's prediction passes still fit in
# BUDGET (folding from a cold cache, a few minutes, comes on top).
# `make plan` prints that choice and trains nothing. What fits depends on the CPU: a 2-core Xeon with AMX (bfloat16)
# keeps the first two (67 min 33 s with make submit); a 2-core AMD EPYC without bfloat16 (AVX2 only: float32) the
# first one (57 min 22 s for make setup all, CV 0.2401; a second make train && make submit added the second in 50 min
# 34 s, 0.2355, a third the first student in 71 min 11 s, 0.2334, a fourth the second in 74 min 14 s, 0.2325); an
# EPYC with AVX512-BF16 the first two (estimated 51 min; make all from a fresh clone took 60 min 59 s, CV 0.2363).
# Each make train trains at least one more member: run it again for the next budget's worth.
# Your own set: make train MEMBERS="default_gatv2_lstm default_gatv2 default_gatv2_lstm_pseudo" BUDGET=0
GPU := $(shell $(PYTHON) -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null)
MEMBERS ?= $(if $(filter 1,$(GPU)),default default_gatv2 wide pseudo_attn pseudo_attn2 pseudo_attn3_wide wide_drop0 default_gatv2_s7 default_gatv2_lstm default_gatv2_lstm_s11 default_gatv2_e26 default_gatv2_lstm_e34 default_gatv2_lstm_pseudo default_gatv2_lstm_pseudo2 default_gatv2_lstm_pseudo3 transformer_lstm_pseudo edgegated_lstm_pseudo edgegated_lstm_pseudo50,default_gatv2_lstm default_gatv2 default_gatv2_lstm_pseudo default_gatv2_lstm_pseudo2 default_gatv2_lstm_pseudo3 transformer_lstm_pseudo edgegated_lstm_pseudo edgegated_lstm_pseudo50 default_gatv2_lstm_s11 default_gatv2_s7)
BUDGET ?= $(if $(filter 1,$(GPU)),,60)
INPUT ?=
OUT ?= predictions.csv

.PHONY: all help setup data features train plan submit score predict bench test report-loops report-structures report-frames clean-cache compare

all: data features train submit

help:  ## these targets, and the MEMBERS and BUDGET that `make train` would use on this machine
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))
	@echo "MEMBERS ($(if $(filter 1,$(GPU)),GPU,CPU)): $(MEMBERS)"
	@echo "BUDGET: $(if $(BUDGET),$(BUDGET) minutes,none)"

setup:  ## install pinned dependencies and the package
	$(PYTHON) -m pip install -r requirements.txt
	$(PYTHON) -m pip install --no-deps --no-build-isolation -e .

data:  ## verify the vendored competition files in input/ (KAGGLE=1: download the originals first)
ifeq ($(KAGGLE),1)
	kaggle competitions download -c stanford-covid-vaccine -p input/
	cd input && unzip -o -q stanford-covid-vaccine.zip train.json test.json sample_submission.csv
endif
	$(PYTHON) -m openvaccine data

features:  ## fold every molecule (ViennaRNA, cached) and build all graphs, given + MFE structures
	$(PYTHON) -m openvaccine features --mfe

train:  ## train MEMBERS (`make help` prints them; the README's Members table gives their CVs) in one pool of fold processes, or one CONFIG
ifdef CONFIG
	$(PYTHON) -m openvaccine train --config $(CONFIG)
else
	$(PYTHON) -m openvaccine train --config $(MEMBERS) $(if $(BUDGET),--budget $(BUDGET),)
endif

plan:  ## the MEMBERS `make train` would train here within BUDGET (measures this CPU's speed as it does; trains nothing)
	$(PYTHON) -m openvaccine train --config $(MEMBERS) $(if $(BUDGET),--budget $(BUDGET),) --plan

submit:  ## blend every trained run into submissions/submission.csv (validated)
	$(PYTHON) -m openvaccine submit

score:  ## OOF MCRMSE of each run and of the blend (also with weights fitted on other folds; POSITIONS=48:68: a window; RUNS=..., FOLDS="0 1": runs trained on some folds)
	$(PYTHON) -m openvaccine score $(if $(RUNS),--runs $(RUNS)) $(if $(POSITIONS),--positions $(POSITIONS)) $(if $(FOLDS),--folds $(FOLDS))

predict:  ## per-base predictions for new sequences: make predict INPUT=seqs.fasta OUT=preds.csv
	@test -n "$(INPUT)" || (echo "usage: make predict INPUT=seqs.fasta OUT=preds.csv" && exit 2)
	$(PYTHON) -m openvaccine predict --input $(INPUT) --out $(OUT)

bench:  ## graphs/second for training and inference on this device
	$(PYTHON) -m openvaccine bench $(if $(CONFIG),--config $(CONFIG),)

report-loops:  ## how well our bpRNA loop-type annotation reproduces the given one
	$(PYTHON) -m openvaccine report-loops

report-structures:  ## how closely folding settings (temperatures, dangles, parameter sets, engines) reproduce the given 130-nt test structures
	$(PYTHON) -m openvaccine report-structures

report-frames:  ## how far RUNS' predictions for the 130-nt test molecules move with their positions counted back from the 3' end
	@test -n "$(RUNS)" || (echo "usage: make report-frames RUNS='default_gatv2_lstm default_gatv2'" && exit 2)
	$(PYTHON) -m openvaccine report-frames --runs $(RUNS)

test:  ## the test suite (tiny inputs; notebooks executed on a small sample)
	$(PYTHON) -m pytest -q tests

clean-cache:
	rm -rf cache

COMPARE ?= default transformer_nogru gatv2 gine edgegated sage
COMPARE_EPOCHS ?= 12
compare:  ## architecture comparison on fold 0 (quick protocol), then reports/experiments.md
	for c in $(COMPARE); do $(PYTHON) -m openvaccine train --config $$c --run-name cmp-$$c \
	  train.only_folds=[0] train.epochs=$(COMPARE_EPOCHS) || exit 1; done
	$(PYTHON) -m openvaccine report --out reports/runs.md
