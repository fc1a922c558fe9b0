"""Development tooling: a local Apache Kafka without Docker, and `processor dev`."""
