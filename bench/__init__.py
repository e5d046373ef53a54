"""Benchmarks of ringstore: the HTTP load generator, the ceiling server, storage benchmarks."""
