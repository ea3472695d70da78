"""The YAML configs Hydra composes (pkg://cifar10_mlp.conf): conf/ in the repository."""
