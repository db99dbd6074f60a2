"""The pipeline: train -> plain-LoRA baseline -> search -> merge/export -> report, resumable by stage."""
