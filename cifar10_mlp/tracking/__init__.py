"""The only code that talks to MLflow: the store, one run's logging, sweeps as runs, the registry."""
