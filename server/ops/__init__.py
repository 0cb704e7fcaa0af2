"""What ops see: status, propagation, deliveries."""
