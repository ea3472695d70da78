"""The only code that talks to MLflow: the store, a run's logging, sweeps as runs, registry."""
