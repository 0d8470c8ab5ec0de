"""The enrichment worker: ClaimX events in, entity rows out."""
