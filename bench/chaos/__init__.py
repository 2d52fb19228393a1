"""`disrouter bench chaos`: a soak of real node processes on a 3-server NATS cluster under open-loop
load while a seeded schedule kills, pauses and drains nodes and kills NATS servers."""
