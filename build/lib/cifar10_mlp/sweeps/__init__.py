"""Sweeps: the Hydra callback, Optuna studies, launch settings, and the sweep report."""
