"""Wardgate: the decisions and the configuration behind an Envoy API gateway."""

__version__ = "0.1.0"
