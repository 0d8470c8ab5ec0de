"""The retry scheduler: delayed retries held until due, then sent back to the topic they came from."""
