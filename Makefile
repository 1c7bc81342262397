# openvaccine-gnn — `make all` = data → features → train → submit.
PYTHON ?= python
export PYTHONPATH := $(CURDIR)/src:$(PYTHONPATH)
CONFIG ?=
# runs `make train` trains: on a CPU, in this order while they fit BUDGET (below), the default with GATv2 graph
# layers and a BiLSTM in place of the BiGRU for 17 epochs, default_gatv2_lstm (CV 0.2400; the best and cheapest alone),
# it with its BiGRU for 13 epochs, default_gatv2 (0.2418), a pseudo-labelled student of those two,
# default_gatv2_lstm_pseudo (0.2371 on a Xeon, where its teachers read 0.2413 and 0.2422 and the three blend to 0.2342,
# below the four plain members' 0.2346), a second student labelled by the three, default_gatv2_lstm_pseudo2 (0.2367;
# the four blend to 0.2329), a third labelled by the four on half the test molecules an epoch, default_gatv2_lstm_pseudo3
# (0.2364; the five blend to 0.2322), a fourth with TransformerConv graph layers labelled by the five,
# transformer_lstm_pseudo (0.2372; the six blend to 0.2317), a fifth with EdgeGatedConv layers labelled by the six,
# edgegated_lstm_pseudo (0.2370; the seven blend to 0.2312), a sixth, it on half the test molecules an epoch, labelled
# by the seven, edgegated_lstm_pseudo50 (0.2359; the eight blend to 0.2309), the BiLSTM on a second seed, default_gatv2_lstm_s11
# (0.2416), and default_gatv2's second seed default_gatv2_s7 (0.2413), in bfloat16 where the CPU has it (train.cpu_bf16), their folds two at a time in one pool: the four blend
# to 0.2339, `make train && make submit` 62 min 11 s from a fresh clone and a cold cache on a 2-core AMD EPYC
# (measured 2026-11-25) but 2 h 01 min on a 2-core Intel Xeon (2026-11-30), where the budget keeps the first two
# (blend 0.2369); with a GPU the default,
# default_gatv2, the default at width 192, wide (CV 0.2420),
# the default's attention student pseudo_attn (CV 0.2408), that student's student pseudo_attn2 (CV 0.2399),
# a third seed labelled by both at width 192, pseudo_attn3_wide (CV 0.2382), wide without dropout,
# wide_drop0 (CV 0.2438), default_gatv2_s7, default_gatv2_lstm and default_gatv2_lstm_s11: on one H100, each
# run's folds side by side (train.jobs: auto), the first seven took 27 min 42 s from a cold cache and blend to
# 0.2330 (measured 2026-11-24); the next three take them to 0.2319 (CPU-trained in float32; not timed there); and
# default_gatv2 at 26 epochs and its BiLSTM at 34, default_gatv2_e26 and default_gatv2_lstm_e34 (7 min 10 s side by side
# on one H200; 0.2330 as a pair, 0.2311 with the four CPU members, measured 2026-11-30; the twelve together not measured)
# and the students default_gatv2_lstm_pseudo, default_gatv2_lstm_pseudo2, default_gatv2_lstm_pseudo3,
# transformer_lstm_pseudo, edgegated_lstm_pseudo and edgegated_lstm_pseudo50 (0.2294 with those six; not timed on a GPU).
# BUDGET (minutes; CPU only, 0 = none): `train --budget` measures this machine's training and inference speed for
# each kind of member (~12 s a kind) and keeps MEMBERS, in order, while their estimated minutes of training and of
# make submit's prediction passes add up to at most BUDGET (folding from a cold cache, a few minutes, comes on top).
# make submit lifts each target of the blend to a floor fitted on the OOF: every blend above reads ~0.0002 lower then
# (the Xeon pair 0.2367, the eight 0.2307, the twelve runs 0.2292; nested 0.2368, 0.2309, 0.2295).
# BUDGET=0 trains every member. Smaller sets on a CPU, with make submit: MEMBERS="default_gatv2 default_gatv2_lstm
# default_gatv2_lstm_s11" blends to 0.2345 in ~44 min, MEMBERS="default_gatv2 default_gatv2_lstm" to 0.2359 in ~30 min,
# MEMBERS="default wide wide_drop0" to 0.2367 in ~2 h 40 min (float32), the GPU's first seven to 0.2336 in ~10 h 40 min.
GPU := $(shell $(PYTHON) -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null)
MEMBERS ?= $(if $(filter 1,$(GPU)),default default_gatv2 wide pseudo_attn pseudo_attn2 pseudo_attn3_wide wide_drop0 default_gatv2_s7 default_gatv2_lstm default_gatv2_lstm_s11 default_gatv2_e26 default_gatv2_lstm_e34 default_gatv2_lstm_pseudo default_gatv2_lstm_pseudo2 default_gatv2_lstm_pseudo3 transformer_lstm_pseudo edgegated_lstm_pseudo edgegated_lstm_pseudo50,default_gatv2_lstm default_gatv2 default_gatv2_lstm_pseudo default_gatv2_lstm_pseudo2 default_gatv2_lstm_pseudo3 transformer_lstm_pseudo edgegated_lstm_pseudo edgegated_lstm_pseudo50 default_gatv2_lstm_s11 default_gatv2_s7)
BUDGET ?= $(if $(filter 1,$(GPU)),,60)
INPUT ?=
OUT ?= predictions.csv

.PHONY: all help setup data features train submit score predict bench test report-loops report-structures clean-cache compare

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

train:  ## train MEMBERS (`make help` prints them; the comment at the top gives their CVs and times) in one pool of fold processes, or one CONFIG
ifdef CONFIG
	$(PYTHON) -m openvaccine train --config $(CONFIG)
else
	$(PYTHON) -m openvaccine train --config $(MEMBERS) $(if $(BUDGET),--budget $(BUDGET),)
endif

submit:  ## blend every trained run into submissions/submission.csv (validated)
	$(PYTHON) -m openvaccine submit

score:  ## OOF MCRMSE of each run and of the blend (also with weights fitted on other folds)
	$(PYTHON) -m openvaccine score

predict:  ## per-base predictions for new sequences: make predict INPUT=seqs.fasta OUT=preds.csv
	@test -n "$(INPUT)" || (echo "usage: make predict INPUT=seqs.fasta OUT=preds.csv" && exit 2)
	$(PYTHON) -m openvaccine predict --input $(INPUT) --out $(OUT)

bench:  ## graphs/second for training and inference on this device
	$(PYTHON) -m openvaccine bench $(if $(CONFIG),--config $(CONFIG),)

report-loops:  ## how well our bpRNA loop-type annotation reproduces the given one
	$(PYTHON) -m openvaccine report-loops

report-structures:  ## how closely folding settings (temperatures, dangles, parameter sets, engines) reproduce the given 130-nt test structures
	$(PYTHON) -m openvaccine report-structures

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
