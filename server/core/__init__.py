"""Settings, errors, helpers, Redis key names and the Redis connection: no aiohttp, no domain."""
