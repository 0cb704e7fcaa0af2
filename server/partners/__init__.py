"""Partners, keys, rate limits and the poll ledger in Redis; access control on the request path."""
