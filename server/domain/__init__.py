"""The pure domain: articles and revisions, ninjs, feed definitions and partners. No Redis, no aiohttp."""
