"""The ``syndicate`` command."""
