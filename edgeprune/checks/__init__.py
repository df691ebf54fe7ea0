"""Regression checks in CI: baselines, the paired statistics, deploy files, JUnit output.
"""
