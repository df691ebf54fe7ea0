"""Data, models, fine-tuning with distillation, and the metrics they are scored with.
"""
