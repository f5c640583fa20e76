# e2i: every target creates/updates the virtual environment at .venv/ itself (a no-op when current).
# The torch trio is installed first with constraints.txt, then the project, so nothing moves torch.
# GPU box: `make venv TORCH_INDEX=https://download.pytorch.org/whl/cu126` installs the CUDA builds of the
# same trio instead (any index whose wheels match the pinned versions).

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.e2i-installed
TORCH_TRIO  := torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0
TORCH_INDEX ?=
PIP         := $(BIN)/python -m pip --disable-pip-version-check
PIP_FLAGS   ?= --progress-bar off -q

# Paths and pass-through flags (override on the command line).
DATA_ROOT   ?= data/CLOTHO_v2.1
METADATA    ?= $(DATA_ROOT)
CACHE_DIR   ?= stores
CACHE_ARGS  ?=
STORE       ?= stores/toy/train
IMAGES_DIR  ?= stores/toy
IMAGES_ARGS ?=
CONFIG      ?= configs/siglip.yaml
TRAIN_ARGS  ?=
SPACE       ?= tune_spaces/default.yaml
TUNE_ARGS   ?=
DEMO_ARGS   ?=
PYTEST_ARGS ?=
BENCH_ARGS  ?=

.PHONY: venv prepare demo test download-dataset cache-embeddings cache-images train train-heads \
        evaluate tune report bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) -c constraints.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH_TRIO)
	$(PIP) install $(PIP_FLAGS) -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)            ## create/update .venv (no-op when current)

prepare: venv             ## set up the environment and write the toy corpus
	$(BIN)/e2i toy --root data/toy

demo: venv                ## the whole pipeline on the built-in toy corpus (no downloads)
	$(BIN)/e2i demo $(DEMO_ARGS)

test: venv                ## the test suite (CPU, local Ray; slow tests included)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

download-dataset: venv    ## Clotho v2.1 into DATA_ROOT (checksums, resumable)
	$(BIN)/e2i download clotho --root $(DATA_ROOT)

cache-embeddings: venv    ## METADATA=<corpus> CACHE_DIR=<store root> CACHE_ARGS="--batch-size 32 ..."
	$(BIN)/e2i cache --metadata $(METADATA) --cache-dir $(CACHE_DIR) $(CACHE_ARGS)

cache-images: venv        ## STORE=<split dir> IMAGES_DIR=<dir> IMAGES_ARGS="--image-size 128 ..."
	$(BIN)/e2i images --store $(STORE) --images-dir $(IMAGES_DIR) $(IMAGES_ARGS)

train: venv               ## end-to-end PaSST + RoBERTa fine-tuning: TRAIN_ARGS="--batch-size 6 ..."
	$(BIN)/e2i finetune $(TRAIN_ARGS)

train-heads: venv         ## projection heads on a store: CONFIG=configs/x.yaml TRAIN_ARGS="--set optim.lr=1e-4"
	$(BIN)/e2i train $(CONFIG) $(TRAIN_ARGS)

evaluate: venv            ## CONFIG=configs/x.yaml (evaluates results/<name>/best_model.safetensors)
	$(BIN)/e2i evaluate $(CONFIG)

tune: venv                ## SPACE=tune_spaces/x.yaml TUNE_ARGS="--num-samples 20 --resume"
	$(BIN)/e2i tune $(SPACE) $(TUNE_ARGS)

report: venv              ## EXPERIMENT=<tune output dir>
	$(BIN)/e2i report $(EXPERIMENT)

bench: venv               ## benchmarks/ : measured ratios vs targets (see BENCHMARKS.md)
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

clean:                    ## remove run outputs (keeps .venv)
	rm -rf stores results checkpoints evaluation_results ray_results demo_output tune_results
