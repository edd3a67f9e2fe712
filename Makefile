# Two commands do all the setup on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-dev test demo demo-ablation demo-pretrain espeak clean-demo

# install: the package (what the demo runs); install-dev: with the test dependencies as well.
# --no-compile: pip would byte-compile all ~20,000 .py files it installs (~50 s of one core);
# Python compiles the modules a run imports on first use instead.
install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q --no-compile -e '.[dev]'
	touch $@

test: install-dev
	$(PY) -m pytest -q

# espeak-ng synthesises the demo corpus; it is a Debian package.
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "installing espeak-ng (Debian package)"; \
	  (apt-get update -qq && apt-get install -y -qq espeak-ng) >/dev/null || \
	  { echo "espeak-ng is missing and could not be installed: run 'apt-get install espeak-ng' as root" >&2; exit 1; }; }

# The demo is stage 2 of the seed's two stages: the flagship config with the demo overlay on top, which
# instruction-tunes from the ASR pretrain the repository ships in models/demo/pretrain (`make demo-pretrain`).
# SEED=n seeds the model and the data (--seed_everything n --data.seed n; unset: the flagship's 42). The fit validates after every epoch;
# its last validation, on the final weights, prints the WER table and writes demo/runs/report/wer.json
# and learning_curve.png. `borealis validate $(DEMO_CONFIG) --ckpt_path demo/runs/checkpoints/last.ckpt`
# scores the same weights again, with the Whisper baseline row.
DEMO_CONFIG := --config configs/it_fresh.yaml --config configs/demo.yaml
SEED_ARGS := $(if $(SEED),--seed_everything $(SEED) --data.seed $(SEED))

demo: install espeak $(DEMO_DIR)/corpus.json
	$(VENV)/bin/borealis fit $(DEMO_CONFIG) $(SEED_ARGS)

# The augmentation ablation: the same demo without the curriculum (BENCHMARKS.md compares the two).
demo-ablation: install espeak $(DEMO_DIR)/corpus.json
	$(VENV)/bin/borealis fit $(DEMO_CONFIG) --config configs/variants/demo_no_augment.yaml $(SEED_ARGS)

# Stage 1, the ASR pretrain that models/demo/pretrain ships (~30 min on 2 cores, BENCHMARKS.md): a corpus of
# 3x the demo's ASR clips (the same generator and seed, so the same benchmarks), the fit, then its trainable
# weights saved beside the bases (`borealis demo pretrain`, which rewrites models/demo/SHA256SUMS).
PRETRAIN_DIR ?= demo_pretrain
PRETRAIN_CONFIG := --config configs/pretrain.yaml --config configs/demo.yaml --config configs/demo_pretrain.yaml
demo-pretrain: install espeak $(DEMO_DIR)/corpus.json
	$(VENV)/bin/borealis demo --out $(PRETRAIN_DIR) --asr-per-language 18000 --overwrite
	$(VENV)/bin/borealis fit $(PRETRAIN_CONFIG) $(SEED_ARGS)
	$(VENV)/bin/borealis demo pretrain --ckpt $(DEMO_DIR)/runs_pretrain/checkpoints/last.ckpt --out models/demo

# The corpus is deterministic (seeded); it is built once and reused by later `make demo` runs,
# and rebuilt when the corpus builder's sources change (bases.py and pretrain.py make the shipped bases and
# pretrain, not the corpus).
$(DEMO_DIR)/corpus.json: $(filter-out borealis/demo/bases.py borealis/demo/pretrain.py,$(wildcard borealis/demo/*.py))
	$(MAKE) install espeak
	$(VENV)/bin/borealis demo --out $(DEMO_DIR) --overwrite

clean-demo:
	rm -rf $(DEMO_DIR) $(PRETRAIN_DIR)
