"""Peer networking: transports (TCP/TLS, in-memory), multiplexed calls with timeouts, liveness."""
