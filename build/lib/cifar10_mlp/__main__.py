"""`python -m cifar10_mlp`: the same as the `cifar10-mlp` command."""

from cifar10_mlp.entry import main

main()
