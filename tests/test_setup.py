"""What a fresh clone ships for a quiet first start: the served app's settings and .gitignore."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_the_served_app_watches_no_files():
    # Streamlit's watcher walks the whole folder, .venv's thousands of directories included, and
    # floods the log with inotify warnings; a blacklist does not stop the walk (see the browser
    # test that counts the log's warnings).
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["fileWatcherType"] == "none"


def test_the_readme_examples_outputs_are_ignored_by_git():
    ignored = set((ROOT / ".gitignore").read_text().split())
    readme = (ROOT / "README.md").read_text()
    outputs = {"explanations/"} | {f"{folder.rstrip('/')}/" for folder in re.findall(r"--out (\S+)", readme)}
    assert outputs == {"explanations/", "out/", "audit/"}
    assert outputs <= ignored
