"""Compressed bases: sparsity (Shears, SQFT) and INT4 weight-only quantization (SQFT)."""
