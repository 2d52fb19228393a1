"""DiSRouter local tooling: an embedded NATS server, node process launching and the demo."""
