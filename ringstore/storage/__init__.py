"""Storage engines: the only code that touches disk."""
