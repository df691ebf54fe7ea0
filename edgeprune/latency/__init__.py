"""The latency table: per-layer latency profiled on the target, calibrated end to end, and
corrected where the closed loop's budgets land.
"""
