"""An Optuna sweeper for Hydra: trials pruned from their own jobs, samplers and objectives
from YAML, resumable studies."""
