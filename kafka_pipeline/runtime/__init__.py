"""What every Kafka worker shares: consumer and producer lifecycle, offsets, commits, dead letters, ops server, cycle stats."""
