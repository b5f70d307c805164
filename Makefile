# happysad: `make run` sets everything up and runs the whole pipeline on the
# bundled demo site; `make test` sets everything up and runs the tests.

UV_VERSION := 0.13.8
UV := python3 -m uv
# UV_FROZEN: install exactly what uv.lock says, never re-resolve
export UV_FROZEN := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup run test lint bench clean

setup: .venv/.synced

.venv/.synced: pyproject.toml uv.lock
	@$(UV) --version 2>/dev/null | grep -q "$(UV_VERSION)" || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync
	@touch $@

run: setup
	$(UV) run dvc repro
	@echo
	@echo "Done. Raw images and their manifest: data/raw/ (manifest.jsonl)"
	@echo "Crawl report: reports/scrape/metrics.json, failed links: reports/scrape/errors.jsonl"
	@echo "Kept and rejected images: data/clean/ (report.json); splits: data/split/"
	@echo "Training records: data/tfrecords/ (meta.json); all metrics: uv run dvc metrics show"
	@echo "Model: models/model.keras, serving export models/serving/, card models/model_card.md"
	@echo "Test metrics: reports/evaluate/metrics.json; plots: reports/evaluate/plots/*.png"
	@echo "Label your own images: uv run happysad predict PATH..."
	@echo "The demo site that was crawled: data/demo_site/ (ground_truth.json lists its planted faults)"

lint: setup
	$(UV) run ruff check .

test: lint
	$(UV) run pytest

bench: setup
	$(UV) run python -m bench

clean:
	rm -rf .venv data/raw data/demo_site reports .pytest_cache
