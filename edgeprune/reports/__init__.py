"""Run reports (JSON, Markdown, terminal) and their charts.
"""
