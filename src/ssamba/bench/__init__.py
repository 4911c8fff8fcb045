"""Benchmarks (``ssamba bench ...``): efficiency of SSAMBA vs SSAST."""
