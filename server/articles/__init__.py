"""The article store in Redis."""
