"""Extraction (physical slicing), adapter merging and export to standard Hugging Face / PEFT formats."""
