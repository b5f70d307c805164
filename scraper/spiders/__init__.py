"""Spiders, one per kind of source."""
