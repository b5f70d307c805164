"""Benchmarks that print the figures the issues ask for (never run as tests)."""
