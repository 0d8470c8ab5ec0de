"""The ClaimX REST API client."""
