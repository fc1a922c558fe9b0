"""Operator tools: replay and tail."""
