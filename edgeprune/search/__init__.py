"""Budget -> widths: the knapsack on the latency table, the accuracy search over width shapes,
and the closed loop that measures the pruned model and tightens until it fits.
"""
