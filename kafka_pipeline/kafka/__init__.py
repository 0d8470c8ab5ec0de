"""Reaching the brokers: client construction, connection settings, what a broker supports."""
