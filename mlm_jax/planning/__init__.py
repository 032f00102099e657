"""Ahead-of-time plans: a run compiled for a named TPU slice (or this host) before it is rented."""
