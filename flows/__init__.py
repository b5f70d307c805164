"""Prefect flows that run the DVC stages: ``retrain`` (flows/retrain.py) and its deployment.

Prefect is imported only below this package; ``pipeline/`` never imports it.
"""

import os

# No telemetry from the local or temporary Prefect server: it has no internet to send it to.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A first start migrates a new database, which takes longer than Prefect's 20 s default on 2 cores.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
