"""Push: destinations, the durable delivery queue, the dispatcher and the deliverer, their payloads,
retry policy and WebSub leases, and the worker that wires them."""
