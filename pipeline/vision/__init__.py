"""Pixels: decoding and checking images, near duplicates, faces."""
