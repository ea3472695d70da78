"""Config-driven CIFAR-10 experiments with Keras MLPs, tracked in MLflow."""

__version__ = "0.2.0"
