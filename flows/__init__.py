"""Prefect flows that run the DVC stages (they arrive with the Prefect issue)."""
