"""Development tooling: a local Apache Kafka without Docker, and `processor dev`.

It runs from a source checkout: the production image ships without this package
(.dockerignore), and the runtime commands never import it.
"""
