"""Benchmarks of the Lingua scheduler (``make bench``): figures, never assertions."""
