"""Delayed retries: where a failed message goes next (routing) and the scheduler that sends it back when due."""
