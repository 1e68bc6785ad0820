"""The NATS JetStream adapter: topology, the batched event worker, the outbox relay."""
