"""Prefect flows that run the DVC stages: ``retrain`` (flows/retrain.py) and its deployment.

Prefect is imported only below this package; ``pipeline/`` never imports it. Prefect's
settings for this project are in ``prefect.toml`` at the repository root.
"""
