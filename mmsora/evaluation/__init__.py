"""Metrics (issue: evaluation). Empty until metrics land."""
