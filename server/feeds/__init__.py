"""Building, rendering and caching feed pages."""
