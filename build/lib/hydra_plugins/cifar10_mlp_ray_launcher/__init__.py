"""A Ray launcher for Hydra whose sweeps survive the loss of a job's worker."""
