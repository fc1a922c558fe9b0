"""Webhook deliveries into Kafka, routed into one topic per integration status."""

__version__ = "0.1.0"
