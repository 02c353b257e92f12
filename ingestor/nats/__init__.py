"""NATS plumbing: the embedded server, stream provisioning, the publisher, the connection."""
