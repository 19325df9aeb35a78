"""Parametric memory: training data asked of the memories' own text, LoRA training until learned,
evaluation (recall, forgetting), adapter storage, checks and combination."""
