"""Test and benchmark harness: start the graph as users do (`serve run`), vLLM's own
server for comparisons, users and agents through the real CLI and API. Not part of the
application: nothing under serve_app/ or deployments/ imports it."""
