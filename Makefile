# Quick start:  make run   (set up .venv and serve the app on http://localhost:7860)
#               make test  (set up .venv with dev extras, lint, run the test suite)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: run test lint venv venv-dev browser dicom-tools bench clean

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.runtime
venv-dev: $(VENV)/.dev

run: $(VENV)/.runtime
	$(PY) app.py

# Debian's Chromium for the browser tests; only as root and only when it is missing.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

# Debian's dicom3tools (dciodvfy validates the SRs) and Orthanc with its DICOMweb plugin (the
# PACS of the round-trip test); only as root and only when missing.  RUNLEVEL=1 keeps the
# package from starting Orthanc as a system service: the test starts its own on loopback.
dicom-tools:
	@if { [ ! -x /usr/bin/dciodvfy ] || [ ! -x /usr/sbin/Orthanc ] || \
	      [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; } && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			dicom3tools orthanc orthanc-dicomweb >/dev/null; \
	fi

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

test: $(VENV)/.dev browser dicom-tools lint
	$(PY) -m pytest -q

# CPU benchmarks (each prints its figures, the last line a JSON object); GPU: see README.
bench: $(VENV)/.dev
	$(PY) -m benchmarks.bench_inference --weights weights
	$(PY) -m benchmarks.bench_threads
	$(PY) -m benchmarks.bench_loader
	$(PY) -m benchmarks.bench_app_load --weights weights
	$(PY) -m benchmarks.bench_gate --weights weights

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
