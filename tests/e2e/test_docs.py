"""The README and docs/ pages: the README stays a short user's page that starts
with its two commands, pages other than docs/experiments.md describe what is
(no history, no machine load), every relative link leads somewhere, and every
experiment entry says when, with what, at which commit and on which machine."""

import datetime
import glob
import os
import re

import pytest
from helpers.paths import REPO_ROOT

ROOT = REPO_ROOT
README = os.path.join(ROOT, "README.md")
EXPERIMENTS = os.path.join(ROOT, "docs", "experiments.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))

TWO_COMMANDS = """```bash
pip install -e . && python -m apr_jax.train
pip install -e ".[test]" && python -m pytest -n 2 tests
```"""

# Narration of history or of the machine's load: only docs/experiments.md may
# tell what happened when. Matched case-insensitively on prose, with code
# blocks and inline code removed (quoted program output may say anything).
HISTORY = [
    r"used to",
    r"before commit",
    r"after commit",
    r"now",
    r"no longer",
    r"previously",
    r"formerly",
    r"until recently",
    r"any ?more",
    r"(?:an|the) earlier version",
    r"(?:idle|busy|busier) (?:\d-core )?(?:machine|cpu|host|cores?)",
    r"was also running",
    r"(?:second|third|fourth) run",
]
HISTORY_RE = re.compile(r"\b(?:" + "|".join(HISTORY) + r")\b", re.I)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def rel(path):
    return os.path.relpath(path, ROOT)


def prose(text):
    """The text without fenced code blocks and inline code spans."""
    text = re.sub(r"^ *```.*?^ *```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", prose_keep_headings(read(path)), re.M)}


def prose_keep_headings(text):
    """The text without fenced code blocks (whose comment lines are not headings)."""
    return re.sub(r"^ *```.*?^ *```", "", text, flags=re.S | re.M)


def test_readme_is_short_and_starts_with_the_two_commands():
    text = read(README)
    lines = text.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
    assert lines[0].startswith("# "), lines[0]
    after_title = "\n".join(lines[1:]).lstrip("\n")
    assert after_title.startswith(TWO_COMMANDS + "\n"), after_title[:300]


@pytest.mark.parametrize("path", [p for p in PAGES if p != EXPERIMENTS], ids=rel)
def test_pages_describe_what_is_without_history(path):
    found = [
        (n, m.group(0), line.strip())
        for n, line in enumerate(prose(read(path)).splitlines(), 1)
        for m in HISTORY_RE.finditer(line)
    ]
    assert not found, f"{rel(path)} narrates history or machine load (that belongs in docs/experiments.md): {found}"


@pytest.mark.parametrize("path", PAGES, ids=rel)
def test_relative_links_lead_to_files_and_headings_that_exist(path):
    broken = []
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose_keep_headings(read(path))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(linked):
            broken.append(f"{target}: no file {rel(linked)}")
        elif anchor and linked.endswith(".md") and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {rel(linked)}")
    assert not broken, f"{rel(path)}: {broken}"


def experiment_entries():
    """(heading, body) of each '## ' entry of docs/experiments.md."""
    parts = re.split(r"^## ", prose_keep_headings(read(EXPERIMENTS)), flags=re.M)
    return [(part.splitlines()[0], part) for part in parts[1:]]


def test_every_experiment_has_date_command_commit_and_machine():
    entries = experiment_entries()
    assert len(entries) >= 10, "docs/experiments.md lost its entries"
    missing = []
    for heading, body in entries:
        date = re.match(r"(\d{4}-\d{2}-\d{2}) ", heading)
        try:
            datetime.date.fromisoformat(date.group(1)) if date else None
        except ValueError:
            date = None
        checks = {
            "a date (YYYY-MM-DD) starting the heading": date,
            "a '- Commit:' line with a hash": re.search(r"^- Commit: .*`[0-9a-f]{7,40}`", body, re.M),
            "a '- Machine:' line": re.search(r"^- Machine: \S", body, re.M),
            "a '- Command:' line with the command in backticks": re.search(r"^- Command: .*`[^`]+`", body, re.M),
        }
        missing += [f"{heading!r} lacks {what}" for what, ok in checks.items() if not ok]
    assert not missing, missing
