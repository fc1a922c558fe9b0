"""The HTTP process: verify a delivery, persist its exact bytes, then answer 202."""
