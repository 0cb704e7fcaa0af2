"""The aiohttp application: routes, middleware, responses, the fast path and the dashboard."""
