"""The local development cluster: its definition (local.toml) and process harness (harness.py)."""
