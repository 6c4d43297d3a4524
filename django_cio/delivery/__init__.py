"""Delivery: the engine that sends a message's ops, the retry policy, and dead letters."""
