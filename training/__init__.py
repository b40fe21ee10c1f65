"""Training, apart from serving: everything that fits, tunes, builds data or chooses a
threshold for governance. Its output is the governance artifacts (files + manifest) that
serve_app/governance/ only loads; `python -m training.build` (`make governance-weights`)."""
