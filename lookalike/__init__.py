"""Lookalike: visual product search. Shared code for every service lives in this package."""

__version__ = "0.1.0"
