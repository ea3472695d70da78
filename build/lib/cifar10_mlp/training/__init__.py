"""One training run's work: model, optimizer, fit, checkpoints, evaluation, figures."""
