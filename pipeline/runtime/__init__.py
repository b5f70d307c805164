"""How any command runs: flags, logging, errors, child processes, safe files, worker pools."""
