# happysad: `make run` sets everything up and runs the whole pipeline on the
# bundled demo site; `make test` sets everything up and runs the tests.

UV_VERSION := 0.13.8
UV := python3 -m uv
# UV_FROZEN: install exactly what uv.lock says, never re-resolve
export UV_FROZEN := 1
export PYTHONUNBUFFERED := 1

# Prefect keeps its run history in the project (unless you point PREFECT_HOME
# elsewhere): `make run` and `make serve` share it, so past runs show in the UI.
export PREFECT_HOME ?= $(CURDIR)/.prefect
PREFECT_PORT ?= 4200

.PHONY: setup run serve retrain-now tune test lint bench clean browser

setup: .venv/.synced

.venv/.synced: pyproject.toml uv.lock
	@$(UV) --version 2>/dev/null | grep -q "$(UV_VERSION)" || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync
	@touch $@

run: setup
	$(UV) run python -m flows.retrain
	@echo
	@echo "Done. Raw images and their manifest: data/raw/ (manifest.jsonl)"
	@echo "Crawl report: reports/scrape/metrics.json, failed links: reports/scrape/errors.jsonl"
	@echo "Kept and rejected images: data/clean/ (report.json); splits: data/split/"
	@echo "Training records: data/tfrecords/ (meta.json); all metrics: uv run dvc metrics show"
	@echo "Model: models/model.keras, serving export models/serving/, card models/model_card.md"
	@echo "Test metrics: reports/evaluate/metrics.json; plots: reports/evaluate/plots/*.png"
	@echo "Production model (promoted only if it beat the last one): models/production/; decision: reports/promote/decision.json"
	@echo "Label your own images: uv run happysad predict PATH...  (uses models/production/)"
	@echo "See every run in the Prefect UI: make serve, then open http://127.0.0.1:$(PREFECT_PORT)"
	@echo "The demo site that was crawled: data/demo_site/ (ground_truth.json lists its planted faults)"

# The Prefect server and UI on 127.0.0.1, serving the retrain flow on its cron schedule.
serve: setup
	$(UV) run python -m flows.serve --port $(PREFECT_PORT)

# Run the scheduled deployment now (needs `make serve` running).
retrain-now: setup
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(UV) run prefect deployment run retrain/scheduled

# A budgeted hyperparameter search (params.yaml's `tune`) as a Prefect flow; the best
# values end as reports/tune/best_params.yaml and a DVC experiment.
tune: setup
	$(UV) run python -m flows.tune

# Headless Chromium for the UI test: Debian's package, installed when missing and possible.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the Prefect UI test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the UI test will be skipped"; \
	  else echo "warning: no chromium and no root apt-get; the UI test will be skipped"; fi; }

lint: setup
	$(UV) run ruff check .

test: lint browser
	$(UV) run pytest

bench: setup
	$(UV) run python -m bench

clean:
	rm -rf .venv data/raw data/demo_site reports .pytest_cache .prefect .test-artifacts
