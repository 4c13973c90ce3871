# Two commands for a newcomer:  `make paper`  (set up + rebuild the paper)  and  `make test`.
# Each creates the virtual environment on first use. GPU users: TORCH_SPEC='torch==X' (any build).
# `make paper` also gets LaTeX first (as root with apt-get, when latexmk is missing) or, where
# it cannot, stops within seconds saying so; `make figures` builds everything but the PDF.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.gaugeflow-installed

# the Debian packages the PDF needs (the same list as .ci/run)
LATEX_PACKAGES := texlive-latex-base texlive-latex-recommended texlive-science latexmk
LATEXMK ?= $(or $(GAUGEFLOW_LATEXMK),latexmk)
# LATEX_INSTALL=no: never run apt-get, only check (and stop early without LaTeX)
LATEX_INSTALL ?= auto

.PHONY: install latex paper figures test lint clean-results

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first, pinned: a looser requirement would pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[dev,slurm]'
	touch $(STAMP)

install: $(STAMP)

# Before any job: LaTeX present, or installed here (root + apt-get; once: skipped when
# latexmk and pdflatex are found), or a stop within seconds naming the two ways on.
latex:
	@if command -v $(LATEXMK) >/dev/null 2>&1 && command -v pdflatex >/dev/null 2>&1; then \
	  :; \
	elif [ "$(LATEX_INSTALL)" != no ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "== make: latexmk not found: installing LaTeX for the PDF (apt-get, ~2-4 min)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q >/dev/null && \
	  apt-get install -y -q --no-install-recommends $(LATEX_PACKAGES) >/dev/null && \
	  command -v $(LATEXMK) >/dev/null; \
	else \
	  echo "make paper: no LaTeX ($(LATEXMK) and pdflatex) and no way to install it here" \
	    "(needs root and apt-get), so the PDF cannot be built. Either install it:" >&2; \
	  echo "    sudo apt-get install -y --no-install-recommends $(LATEX_PACKAGES)" >&2; \
	  echo "  (other systems: a TeX Live with latexmk), then run make paper again; or build" \
	    "every figure, table and the report, without the PDF:" >&2; \
	  echo "    make figures      (= .venv/bin/snakemake all_but_pdf)" >&2; \
	  exit 1; \
	fi

paper: latex $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES)

figures: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) all_but_pdf

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-results:
	rm -rf results .snakemake
