"""Promethios Native: a governed LLM serving platform on Ray Serve and vLLM."""

__version__ = "0.1.0"
