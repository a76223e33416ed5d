# ConvScope: `make run` opens the window, `make test` runs the suite, `make bench` measures.
# Both create .venv and install everything on first use; later runs reuse it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench install clean style-network

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,scale]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) main.py

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	QT_QPA_PLATFORM=offscreen $(PY) -m bench $(BENCH)

# The style ConvScope ships (engine/resources/styles): the picture, drawn, and the network
# fast-style-train makes of it with its own defaults (a few minutes on two CPU cores).
STYLES := engine/resources/styles
style-network: $(STAMP)
	$(PY) packaging/make_style_picture.py $(STYLES)/stained-glass.png
	$(PY) main.py run fast-style-train --style $(STYLES)/stained-glass.png --save $(STYLES)/stained-glass.pt \
		--restart
	rm -f $(STYLES)/stained-glass.pt.ckpt

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
