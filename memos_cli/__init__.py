"""memos: a memory operating system for LLMs, as a command-line toolkit over cube bundles on disk."""

__version__ = "0.1.0"
