"""kafka-pipeline: ClaimX events -> enrichment worker -> entity rows -> Delta Lake tables."""

__version__ = "0.1.0"
