"""Compressed bases: sparsity (Shears, SQFT) and INT4 weight-only quantization (SQFT), applied to a super-network.

The quantization maths itself (scales, rounding, fake-quant) lives below both this package and ``elastic`` in
``lonas_ray/quant.py``: the elastic linears need it for training, and this package applies it to a base."""
