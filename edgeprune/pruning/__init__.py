"""The model's prunable structure (channel groups), channel importance, physical pruning through a
``PruningEngine`` (Torch-Pruning by default, or NNI), and the prunes edgeprune is compared with
(uniform, global magnitude, NNI).
"""
