"""Syndicate: a news syndication and feed distribution server (aiohttp + Redis)."""
