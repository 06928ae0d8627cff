"""Structured pruning with torch-pruning: attention heads, FFN channels, conv channels."""
