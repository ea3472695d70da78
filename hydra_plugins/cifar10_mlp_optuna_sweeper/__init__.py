"""An Optuna (>= 4) sweeper for Hydra, with studies persisted so a search can resume."""
