"""Datasets, tokenization and federated partitioning."""
