"""Data: reading the CIFAR-10 archive, preprocessing, batches, and the statistics of EDA."""
