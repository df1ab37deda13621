"""Benchmarks: policy overhead, loader throughput and end-to-end policy comparisons."""
