# Two commands do all the setup on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo demo-ablation espeak clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -q

# espeak-ng synthesises the demo corpus; it is a Debian package.
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "installing espeak-ng (Debian package)"; \
	  (apt-get update -qq && apt-get install -y -qq espeak-ng) >/dev/null || \
	  { echo "espeak-ng is missing and could not be installed: run 'apt-get install espeak-ng' as root" >&2; exit 1; }; }

demo: install espeak $(DEMO_DIR)/corpus.json
	$(VENV)/bin/borealis fit --config configs/demo.yaml
	$(VENV)/bin/borealis validate --config configs/demo.yaml --ckpt_path $(DEMO_DIR)/runs/checkpoints/last.ckpt

# The augmentation ablation: the same demo without the curriculum (BENCHMARKS.md compares the two).
demo-ablation: install espeak $(DEMO_DIR)/corpus.json
	$(VENV)/bin/borealis fit --config configs/demo.yaml --config configs/variants/demo_no_augment.yaml
	$(VENV)/bin/borealis validate --config configs/demo.yaml --config configs/variants/demo_no_augment.yaml \
	  --ckpt_path $(DEMO_DIR)/runs_none/checkpoints/last.ckpt

# The corpus is deterministic (seeded); it is built once and reused by later `make demo` runs,
# and rebuilt when the demo builder's sources change.
$(DEMO_DIR)/corpus.json: $(wildcard borealis/demo/*.py)
	$(MAKE) install espeak
	$(VENV)/bin/borealis demo --out $(DEMO_DIR) --overwrite

clean-demo:
	rm -rf $(DEMO_DIR)
