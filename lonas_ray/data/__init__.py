"""Training and evaluation data: config, checks, loading, tokenization.

One concern a file, in the order data flows:

* ``spec.py``: ``DataSpec`` (the ``data`` config section) and ``check_data``, the
  driver-side check of every record before any worker starts.
* ``templates.py``: prompt templates, their defaults and rendering.
* ``records.py``: what a valid record is; multiple-choice scores -> choices + label.
* ``shipped.py``: task data inside the package and its recorded train/test split.
* ``load.py``: files -> ``datasets.Dataset`` of prompts and answers (or choices).
* ``tokenize.py``: prompts and answers -> input_ids/labels/attention_mask; ``collate``.
* ``byte_tokenizer.py``: a real tokenizer for the 256-token tiny models.
* ``toy.py``: a learnable toy task for tests.
"""
