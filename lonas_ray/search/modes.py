"""What a trial of the search is for, and the configuration key that says so.

A pool's Tune run evaluates its own search first, then its follow-up work on the same evaluators (the
super-network stays loaded): ``search`` and ``cross`` trials are scored on the search subset and timed (their rows'
``phase``), ``final`` ones on the full set and not timed (``final_quality.json``). The mode travels in the trial's
configuration under ``MODE``, beside the sub-network's choices, which is all Tune hands a trainable.
"""

SEARCH, CROSS, FINAL = "search", "cross", "final"
MODE = "lonas_mode"
