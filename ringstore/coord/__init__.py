"""Request coordination: Trio drivers of the pure quorum cores (get, put, delete, chunks)."""
