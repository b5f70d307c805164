"""happysad's stage logic: plain functions over files, free of Prefect and DVC."""
