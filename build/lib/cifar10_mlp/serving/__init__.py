"""Serving a logged model: class probabilities for image files."""
