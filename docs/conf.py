"""Sphinx configuration for buildbot-stats."""

project = "buildbot-stats"
author = "buildbot-stats developers"
copyright = "2026, buildbot-stats developers"
extensions: list[str] = []
master_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
