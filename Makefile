# Two entry points (see README): `make demo` runs the main job on the embedded phantom, `make test`
# runs the test suite. Both create .venv and install the package there when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.isrg-installed

# nnU-Net folders for the demo and the tests; a user's own exported values win.
export nnUNet_raw ?= $(CURDIR)/work/nnUNet_raw
export nnUNet_preprocessed ?= $(CURDIR)/work/nnUNet_preprocessed
export nnUNet_results ?= $(CURDIR)/work/nnUNet_results
# nnU-Net's defaults start 8 worker processes of ~0.7 GB each; a 2-core machine wants 2.
export nnUNet_def_n_proc ?= 2
export nnUNet_n_proc_DA ?= 2

.PHONY: install browser dicom-tools demo test clean-work

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(VENV)/bin/isrg setup-env
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# The viewer's browser test drives Debian's Chromium (a test tool's own browser download fails here).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing Debian's chromium for the browser test"; \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# The DICOM exports are checked with dciodvfy from Debian's dicom3tools (the test skips without it).
dicom-tools:
	@command -v dciodvfy >/dev/null 2>&1 || \
	  { echo "installing Debian's dicom3tools for the DICOM validation test"; \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dicom3tools >/dev/null || \
	    echo "dicom3tools could not be installed: the dciodvfy test will be skipped"; }

test: $(STAMP) browser dicom-tools
	$(PY) -m pytest tests -q -p no:cacheprovider

clean-work:
	rm -rf work
