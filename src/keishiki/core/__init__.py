"""Shared model of what a file holds: sources, tensors, model info, dtypes, pickles."""
