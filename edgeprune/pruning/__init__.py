"""The model's prunable structure (channel groups), channel importance, physical pruning, and
the prunes edgeprune is compared with (uniform, global magnitude, NNI).
"""
