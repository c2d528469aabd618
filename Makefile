# medvol — the two quick-start commands are `make demo` and `make test`.
# Both set everything up from nothing (a venv in .venv, the Debian packages headless napari needs)
# and are idempotent: a second run skips what is done.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medvol-installed
SYS_STAMP := $(VENV)/.system-packages
DEMO_OUT ?= demo_out
SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*.h)

.PHONY: setup demo test test-all clean

setup: $(STAMP) $(SYS_STAMP)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check --no-build-isolation -e '.[dev]'
	touch $@

$(SYS_STAMP): tools/install_system_packages.sh
	bash tools/install_system_packages.sh
	mkdir -p $(VENV) && touch $@

demo: setup
	$(BIN)/python tools/demo.py --out $(DEMO_OUT)

test: setup
	xvfb-run -a -s "-screen 0 1280x1024x24" $(BIN)/python -m pytest -q tests

test-all: setup
	xvfb-run -a -s "-screen 0 1280x1024x24" $(BIN)/python -m pytest -q -m "slow or not slow" tests

clean:
	rm -rf build *.egg-info medvol/_C*.so $(DEMO_OUT)
