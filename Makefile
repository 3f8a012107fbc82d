# The two commands: `make demo` runs the main job end to end, `make test` passes the tests.
# Everything installs into .venv/ at the repository root; `make setup` is run by both when needed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# tf-keras writes the Keras 2 .h5 fixtures the converter must load. It is a test-only tool and its declared
# dependency is the full 572 MB tensorflow wheel; --no-deps lets it use the tensorflow-cpu already installed.
TF_KERAS := tf-keras==2.21.0

.PHONY: setup system-deps test test-fast lint coverage demo bench install clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[convert,gradcam,console,relay,line,dev]'
	$(PY) -m pip install --quiet --no-deps '$(TF_KERAS)'
	touch $@

# Debian's packages the tests run for real: mosquitto (brokers), openssl (certificates), chromium (the console's
# browser tests, driven by Playwright: never a downloaded browser), postgresql (a cluster of the suite's own), and
# qemu-user-static + debootstrap (the unit installed and run in an aarch64 Debian root, as on a Raspberry Pi).
# Installed when run as root (CI, a fresh machine); otherwise the command to run is printed.
DEBS := mosquitto mosquitto-clients openssl chromium postgresql qemu-user-static debootstrap
system-deps:
	@missing=""; \
	for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's$$missing"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "the tests need:$$missing (sudo apt-get install$$missing)" >&2; exit 1; fi

test: setup system-deps
	$(PY) -m pytest

# The tiers (docs/benchmarks.md): each test says what it needs. The fast tier needs neither TensorFlow nor the
# product's programs run as processes (a Mosquitto on loopback and in-process units it does use): under two minutes.
test-fast: setup system-deps
	$(PY) -m pytest -m 'not tensorflow and not processes'

# ruff; the layers (import-linter: a lower layer importing a higher one fails); mypy --strict on the product.
lint: setup
	$(VENV)/bin/ruff check console contract core converter edge relay harness tests bench demo
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Which lines the fast tier runs, per product module (a module at 0 % is one the fast tier does not reach).
coverage: setup system-deps
	$(PY) -m coverage run --source=console,contract,edge,relay,converter -m pytest -q -m 'not tensorflow and not processes'
	$(PY) -m coverage report --skip-empty

demo: setup
	$(PY) -m demo

bench: setup
	$(PY) -m bench.models

# A unit or the relay's host, as the systemd units expect it (systemd/install.sh says what goes where):
#   sudo make install                           the venv in /opt/defect-edge, units, /etc/defect-edge, system users
#   make install DESTDIR=/tmp/pkg               the same tree under DESTDIR, for a package or an image build
# Also: PREFIX, SYSCONFDIR, UNITDIR, SYSUSERSDIR, EXTRAS=gradcam (or relay, console), SYSTEM_SITE_PACKAGES=auto|yes|no, PIP_ARGS.
PREFIX ?= /opt/defect-edge
install:
	PYTHON='$(PYTHON)' PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' SYSCONFDIR='$(SYSCONFDIR)' UNITDIR='$(UNITDIR)' \
	  SYSUSERSDIR='$(SYSUSERSDIR)' EXTRAS='$(EXTRAS)' SYSTEM_SITE_PACKAGES='$(SYSTEM_SITE_PACKAGES)' \
	  PIP_ARGS='$(PIP_ARGS)' sh systemd/install.sh

clean:
	rm -rf var/demo var/mail .pytest_cache .mypy_cache .ruff_cache
