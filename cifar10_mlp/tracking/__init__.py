"""The only code that talks to MLflow: the store, a run's logging, sweeps as runs, registry."""

import os

# MLflow's usage telemetry, unless the user chose: where it cannot reach its server (offline
# nodes), its thread removes an environment variable while a request reads the environment,
# and that request fails with KeyError '_MLFLOW_TELEMETRY_SESSION_ID' (docs/troubleshooting.md)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
