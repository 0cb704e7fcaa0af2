"""Background machinery shared by the server and the worker."""
