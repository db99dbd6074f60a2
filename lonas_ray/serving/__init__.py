"""Serving exported sub-networks in engines other than transformers (vLLM through a plugin)."""
