"""Data: synthetic generators with known ground truth, loaders for published formats, splits."""
