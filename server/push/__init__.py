"""Push: destinations, the durable delivery queue and the push worker."""
