"""The repository speaks of the product, not of its making (STYLE.md, habit 15).

Every text file of the repository (those git tracks, and new ones it does not ignore;
``.git`` aside) is scanned for wording about how it was developed: numbered development
sittings ("session 8", "sessions 5-6", "session-8"), "this/next/later session", "sitting",
"was lent" a machine, helper agents and the names of AI tools. "Session" in the
product's own sense (a browser session in Gradio, pytest's session-scoped fixtures) is
not matched: the patterns need a number or one of those words beside it.

This file is not scanned: its patterns would match themselves.

``KNOWN_OFFENDERS`` lists, as (path, number of hits), the files still known to carry such
wording; the test prints them on every run (and warns while the list is not empty) and
fails when a file has a hit count other than its listed one: more means new wording,
fewer means the entry is stale and must be lowered or removed.

The hand-written docs (README.md, docs/*.md) are also checked for earlier models called
"current" (STYLE.md, habit 16): such a name drifts when another model is bundled, so
earlier models are named by the date or commit they were bundled;
``KNOWN_CURRENT_MODEL_WORDING`` works as ``KNOWN_OFFENDERS`` does.
"""

from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
THIS_FILE = Path(__file__).resolve().relative_to(REPO).as_posix()

DEVELOPMENT_HISTORY = re.compile(
    "|".join(
        [
            r"\bsessions?\s+\d",  # "session 8", "sessions 5-6", "Session 11's"
            r"\bsession-\d",  # "session-8 model"
            r"\bthis session\b",
            r"\bnext session\b",
            r"\blater session\b",
            r"\bearlier session\b",
            r"\bsitting\b",
            r"\bwas lent\b",
            r"\blent (?:a|an|the) (?:GPU|H100|machine|device)\b",
            r"\bhelper agents?\b",
            r"\bAI (?:assistant|agent)s?\b",
            r"\bClaude\b",
            r"\bChatGPT\b",
            r"\bCodex\b",
            r"\bCopilot\b",
        ]
    ),
    re.IGNORECASE,
)

# where to look without git (never .venv, runs/ or cache/: other projects' text lives there)
UNTRACKED_SCAN_FOLDERS = (".ci", "benchmarks", "docs", "tests", "training", "weights", "xray_app")

# (path, hits) of files still known to carry development-history wording. Empty each
# entry once its file is fixed (the card: fix training.model_card, then regenerate it).
KNOWN_OFFENDERS: tuple[tuple[str, int], ...] = ()


def repository_text_files() -> list[str]:
    """Repository-relative paths of the text files to scan, sorted (this file left out)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO, capture_output=True, check=True, text=True,
        ).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):  # no git, or not a checkout: the project's own folders
        listed = [p.relative_to(REPO).as_posix() for p in REPO.glob("*") if p.is_file()]
        for folder in UNTRACKED_SCAN_FOLDERS:
            listed += [p.relative_to(REPO).as_posix() for p in (REPO / folder).rglob("*")
                       if "__pycache__" not in p.parts]
    paths = []
    for name in sorted(set(filter(None, listed))):
        path = REPO / name
        if name == THIS_FILE or not path.is_file():
            continue
        with path.open("rb") as handle:
            if b"\0" in handle.read(8192):  # binary: weights, plots
                continue
        paths.append(name)
    return paths


def wording_hits(name: str) -> list[str]:
    """``path:line: text`` for every development-history match in one file."""
    text = (REPO / name).read_text(encoding="utf-8", errors="replace")
    return [
        f"{name}:{number}: {match.group(0)!r} in {line.strip()[:160]}"
        for number, line in enumerate(text.splitlines(), start=1)
        for match in DEVELOPMENT_HISTORY.finditer(line)
    ]


def test_patterns_match_development_wording_and_not_product_sessions():
    should_match = ["session 8", "sessions 5–6", "Session 11's folds", "the session-8 model",
                    "in this session", "a later session", "one sitting", "was lent a GPU",
                    "a helper agent", "Claude", "Codex"]
    should_not = ["a session's study leaves server memory after 15 minutes", "gr.State per session",
                  'scope="session"', "session-scoped fixture"]
    missed = [s for s in should_match if not DEVELOPMENT_HISTORY.search(s)]
    wrong = [s for s in should_not if DEVELOPMENT_HISTORY.search(s)]
    assert not missed, f"patterns should match development wording: {missed}"
    assert not wrong, f"patterns should not match product wording: {wrong}"


def test_repository_text_speaks_of_the_product_not_of_its_making():
    files = repository_text_files()
    assert "README.md" in files and any(f.startswith("docs/") for f in files), (
        f"expected README.md and docs/ among the {len(files)} scanned files"
    )
    allowed = dict(KNOWN_OFFENDERS)
    print(f"\nknown offenders allowed ({len(allowed)}): {allowed or 'none'}")
    if allowed:
        warnings.warn(f"development-history wording still allowed in: {allowed}", UserWarning, stacklevel=1)

    problems = []
    for name in files:
        hits = wording_hits(name)
        if name in allowed:
            for hit in hits:
                print(f"  allowed: {hit}")
        if len(hits) != allowed.get(name, 0):
            expected = allowed.get(name, 0)
            problems.append(f"{name}: {len(hits)} hits, {expected} allowed")
            problems.extend(f"  {hit}" for hit in hits)
    missing = [name for name in allowed if name not in files]
    problems.extend(f"{name}: listed in KNOWN_OFFENDERS but not a scanned file" for name in missing)
    assert not problems, (
        "development-history wording (the repository must speak of the product; "
        "fix the text, or update KNOWN_OFFENDERS to the exact count if it is a known file):\n"
        + "\n".join(problems)
    )



# --- earlier models are named by date or commit (STYLE.md, habit 16) ---------------------

# "current" drifts: the model it meant when written is not the one bundled when it is read.
# An anchor such as ``#how-the-current-weights-was-made`` is not matched (hyphens, not spaces).
CURRENT_MODEL = re.compile(
    r"\bcurrent(?:ly)?\s+(?:bundled\s+)?(?:model|one|best|recipe)s?\b"
    r"|\bcurrent(?:ly)?\s+bundled\b",
    re.IGNORECASE,
)

# (path, hits) of hand-written docs still known to call a model "current". Lower or remove
# an entry once its file is fixed; the test fails on any other count.
KNOWN_CURRENT_MODEL_WORDING: tuple[tuple[str, int], ...] = ()


def hand_written_docs() -> list[str]:
    """README.md and docs/*.md, repository-relative (weights/README.md is generated)."""
    return ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))]


def current_model_hits(name: str) -> list[str]:
    """``path:line: phrase`` for every "current model" phrase in one file.

    The whole text is searched, so a phrase wrapped over two lines is found too.
    """
    text = (REPO / name).read_text(encoding="utf-8")
    return [
        f"{name}:{text.count(chr(10), 0, match.start()) + 1}: {' '.join(match.group(0).split())!r}"
        for match in CURRENT_MODEL.finditer(text)
    ]


def test_current_model_pattern_matches_drifting_names_and_not_anchors():
    should_match = ["the current bundled model (160 px)", "the model bundled before the current one",
                    "the Current Model", "replaces the current best", "the currently bundled weights",
                    "the current bundled model's recipe", "is above the current\n  model's"]
    should_not = ["[training.md](training.md#how-the-current-weights-was-made)",
                  "the model bundled 2026-11-26 (160 px, 400 radiographs)", "the best recipe so far",
                  "CurrentRequestedProcedureEvidenceSequence"]
    missed = [s for s in should_match if not CURRENT_MODEL.search(s)]
    wrong = [s for s in should_not if CURRENT_MODEL.search(s)]
    assert not missed, f"pattern should match a model called current: {missed}"
    assert not wrong, f"pattern should not match: {wrong}"


def test_hand_written_docs_name_earlier_models_by_date_or_commit_never_current():
    docs = hand_written_docs()
    assert len(docs) > 5 and all((REPO / d).is_file() for d in docs), f"expected README.md and docs/*.md: {docs}"
    allowed = dict(KNOWN_CURRENT_MODEL_WORDING)
    if allowed:
        warnings.warn(f'docs still calling a model "current": {allowed}', UserWarning, stacklevel=1)

    problems = []
    for name in docs:
        hits = current_model_hits(name)
        if len(hits) != allowed.get(name, 0):
            problems.append(f"{name}: {len(hits)} hits, {allowed.get(name, 0)} allowed")
            problems.extend(f"  {hit}" for hit in hits)
    problems.extend(f"{name}: listed in KNOWN_CURRENT_MODEL_WORDING but not a hand-written doc"
                    for name in allowed if name not in docs)
    assert not problems, (
        'a doc calls a model "current" (name it by the date or commit it was bundled, e.g. '
        '"the model bundled 2026-11-26 (160 px, 400 radiographs)", or refer to '
        "weights/config.json for the bundled one; or update KNOWN_CURRENT_MODEL_WORDING to "
        "the exact count if it is a known file):\n" + "\n".join(problems)
    )
