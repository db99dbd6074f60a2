"""Modules that slice: elastic linears with LoRA, skippable blocks, and the super-network that drives them."""
