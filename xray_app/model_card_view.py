"""The Model tab's text: the loaded weights' facts, then their model card.

The card (``weights/README.md``, written by ``python -m training.model_card``) links its
plots relative to itself, as the Hugging Face Hub renders them; here they are embedded so
the browser can show them.  A card that cannot be tied to the loaded weights gets a note.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xray_app.model import CONFIG_FILE, WEIGHTS_FILE, sha256_of

if TYPE_CHECKING:
    from xray_app.predictor import Predictor


def md_escape(text: Any) -> str:
    """``text`` with Markdown's special characters escaped (file names, config values)."""
    return re.sub(r"([\\`*_{}\[\]<>#|])", r"\\\1", str(text))


def model_card_markdown(predictor: Predictor, card_paths: Sequence[Path]) -> str:
    """The model card (first of ``card_paths`` that exists) after the config's facts."""
    config = predictor.config
    provenance = config.provenance or {}
    facts = [
        f"**Name:** {md_escape(config.name)}",
        f"**Trained:** {'yes' if config.trained else '**NO: random initialisation (UNTRAINED WEIGHTS)**'}",
        f"**Training data:** {md_escape(predictor.model_info['data'])}",
        f"**Input size:** {config.input_size} px",
        "**Scoring:** " + ("each probability averages the radiograph and its left-right mirror "
                           "image; the heatmaps explain that average"
                           if config.mirror_average else "the radiograph as uploaded"),
        f"**sha256:** `{predictor.model_info.get('sha256', '')}`",
    ]
    metrics = provenance.get("metrics")
    if metrics:
        facts.append("**Training-time validation metrics at the kept epoch (uncalibrated; see the card below for the evaluation):**\n\n```json\n" + json.dumps(metrics, indent=2) + "\n```")
    thresholds = " · ".join(
        f"{md_escape(label)} {threshold:.2f}" for label, threshold in zip(config.labels, config.thresholds, strict=True)
    )
    facts.append(f"**Class thresholds:** {thresholds}")
    points = config.operating_points or {}
    if points.get("description"):
        facts.append(f"**Operating points:** {md_escape(points['description'])}")
    facts.append(population_facts(predictor))
    for path in card_paths:
        if path.is_file():
            card = path.read_text(encoding="utf-8")
            card = re.sub(r"\A---\n.*?\n---\n", "", card, flags=re.S)  # Hub YAML front matter
            card = _embed_local_images(card, path.parent)
            note = _card_mismatch_note(path, str(predictor.model_info.get("sha256", "")), card)
            return "\n\n".join(facts) + "\n\n---\n\n" + note + card
    names = ", ".join(str(p) for p in card_paths) or "weights/README.md"
    return "\n\n".join(facts) + f"\n\n---\n\n**No model card found** (looked for {md_escape(names)})."


def population_facts(predictor: Predictor) -> str:
    """Which population the probabilities are for and its prevalences (the one the
    predictor uses: the config's, or a table given at start-up)."""
    population = getattr(predictor, "population", None)
    if population is None:
        return ("**Probabilities are for:** the training sample the calibration was fitted on "
                "(no population recorded)")
    shares = " · ".join(f"{md_escape(label)} {p:.2%}"
                        for label, p in zip(population.labels, population.prevalence, strict=True))
    return (f"**Probabilities are for:** {md_escape(population.name)}, prior-shift corrected "
            f"from the calibration sample; prevalences: {shares}")


def _embed_local_images(markdown: str, folder: Path) -> str:
    """Inline ``![alt](relative.png)`` images found under ``folder`` as data URIs.

    The card links its plots relative to itself (as the Hub renders them); the browser
    cannot fetch those paths from the app, so they are embedded.  Other links stay as they are.
    """

    def embed(match: re.Match[str]) -> str:
        alt, target = match.group(1), match.group(2)
        file = (folder / target).resolve()
        if "://" in target or not file.is_file() or not file.is_relative_to(folder.resolve()):
            return match.group(0)
        encoded = base64.b64encode(file.read_bytes()).decode("ascii")
        return f"![{alt}](data:image/png;base64,{encoded})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)", embed, markdown)


def _card_mismatch_note(card_path: Path, sha256: str, card: str) -> str:
    """A caution when the card cannot be tied to the loaded weights (else an empty string).

    The card belongs to the weights beside it (``model.safetensors``, or the sha256 pinned
    in ``config.json``'s ``hub`` entry) or names the loaded weights' sha256 itself.
    """
    if sha256 and sha256 in card:
        return ""
    folder = card_path.parent
    known: set[str] = set()
    if (folder / WEIGHTS_FILE).is_file():
        known.add(sha256_of(folder / WEIGHTS_FILE))
    try:
        hub = json.loads((folder / CONFIG_FILE).read_text()).get("hub") or {}
        if hub.get("sha256"):
            known.add(str(hub["sha256"]).lower())
    except (OSError, ValueError, AttributeError):
        pass
    if sha256 in known:
        return ""
    return (
        f"> **Note:** this card ({md_escape(card_path)}) could not be matched to the loaded "
        f"weights (sha256 `{sha256[:12]}`); it may describe other weights.\n\n"
    )
