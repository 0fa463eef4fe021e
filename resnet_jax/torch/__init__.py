"""PyTorch side: the three models in PyTorch (reference.py) and weight conversion (convert.py)."""
