"""Local services for `make run` and the tests: a real Kafka broker and a real PostgreSQL."""
