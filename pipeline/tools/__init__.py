"""Commands around the DAG that are not its stages: predict, promote, preset, a tuning trial."""
