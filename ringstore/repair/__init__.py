"""Background workers: chunk sweeping and scrubbing (handoff and anti-entropy join them later)."""
