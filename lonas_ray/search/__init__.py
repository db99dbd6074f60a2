"""Search over sub-networks: the results table the trials write, and the Pareto maths that reads it."""
