"""lonas-ray: compress and fine-tune LLMs by architecture search over elastic LoRA adapters, on Ray.

Importing the package registers the per-layer export classes (``lonas_llama``,
``lonas_mistral``, ...) with transformers' Auto classes, so exported
sub-networks load with ``AutoModelForCausalLM.from_pretrained``.
"""

from lonas_ray.merge import hf_classes as _hf_classes  # noqa: F401  (registers Auto classes)

__version__ = "0.1.0"
