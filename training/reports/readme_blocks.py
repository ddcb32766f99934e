"""The README's sentences about the bundled model, rendered from its ``config.json``.

The README holds two blocks between HTML comment markers::

    <!-- bundled-model:disclaimer -->...<!-- /bundled-model:disclaimer -->
    <!-- bundled-model:summary -->...<!-- /bundled-model:summary -->

``training.bundle --readme README.md`` rewrites them from the bundle it has just made, and
a test compares them with :func:`render_blocks` of ``weights/config.json``, so no figure
about the bundled model is typed by hand.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["BLOCKS", "ReadmeBlockError", "read_blocks", "render_blocks", "update_readme"]

BLOCKS = ("disclaimer", "summary")
ARCHITECTURE_NAMES = {"resnet50": "ResNet-50", "tiny-resnet": "tiny ResNet (tests only)"}


class ReadmeBlockError(ValueError):
    """A README without the markers of a block, or a config without what it needs."""


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- bundled-model:{name} -->\n)(.*?)(<!-- /bundled-model:{name} -->)", re.S)


def _ci(entry: dict[str, Any], digits: int = 3) -> str:
    return f"{entry['value']:.{digits}f} (95% CI {entry['ci_low']:.{digits}f}–{entry['ci_high']:.{digits}f})"


def _train_count(config: dict[str, Any]) -> str:
    """How many radiographs the model was trained on, as the split records it."""
    train = config.get("provenance", {}).get("split", {}).get("images", {}).get("train")
    return f"{train:,}" if isinstance(train, int) else "an unrecorded number of"


def _disclaimer(config: dict[str, Any]) -> str:
    train = _train_count(config)
    return ("> **Research demo, not a medical device.** It has not been cleared or validated\n"
            "> clinically and must not be used for diagnosis, triage or treatment. The bundled weights\n"
            f"> were trained on **{train} radiographs**; their measured accuracy is modest (see\n"
            "> [Weights](#weights)).\n")


def _start(pretrained: str) -> str:
    """What training started from, for people (``provenance.pretrained``)."""
    return "random initialisation" if pretrained.startswith("none") else pretrained


def _wrap(paragraph: str) -> str:
    return textwrap.fill(paragraph, width=92, break_long_words=False, break_on_hyphens=False) + "\n"


def _flag_sentence(config: dict[str, Any]) -> str:
    points = config.get("operating_points")
    if not points:
        return ""
    weighted = points["out_of_fold"]["population"]
    return (f"A flag means the probability is at or above the finding's operating point: "
            f"{points['description']}; out of fold (cross-fitted) and weighted to "
            f"{config['population']['name']}, that is "
            f"{weighted['flags_per_normal_film']['value']:.2f} pathology flags per normal film and "
            f"{weighted['abnormal_films_with_a_correct_flag']['value']:.0%} of films with a pathology "
            "flagged with at least one of theirs. Probabilities are for that population "
            "(prior-shift correction of the calibrated odds).")


def _summary(config: dict[str, Any]) -> str:
    provenance = config["provenance"]
    evaluation = provenance["evaluation"]
    test, oof = evaluation["test"], evaluation.get("out_of_fold")
    epochs = provenance.get("train_config", {}).get("epochs")
    lines = [
        f"`weights/` holds a {ARCHITECTURE_NAMES.get(config['architecture'], config['architecture'])} trained **from "
        f"{_start(provenance.get('pretrained', 'unrecorded weights'))}** on {_train_count(config)} "
        f"NIH radiographs, at {config['input_size']} px"
        + (f" for {epochs} epochs" if epochs else "") + ". "
        f"On the **{test['images']:,} test radiographs of "
        f"{test['patients']:,} patients it never saw**, its {test['metric']} is "
        f"**{_ci(test)}**"
        + (f"; out of fold on the {oof['images']:,} training radiographs, {_ci(oof)}" if oof else "")
        + ".",
    ]
    for key, where in (("test", "test"), ("out_of_fold", "out-of-fold")):
        sources = (evaluation.get(key) or {}).get("by_source")
        if sources:
            lines.append(f"Per source folder, {where}: " + "; ".join(
                f"`{name}` {entry['value']:.3f} ({entry['images']:,} radiographs)"
                for name, entry in sources.items()) + ".")
    reference = evaluation.get("reference")
    if reference:
        lines.append(f"On the {reference['images']} test radiographs where the {reference['name']} "
                     f"has predictions it scores {reference['value']:.3f}, this model "
                     f"{reference['ours_on_same']:.3f}.")
    localization = provenance.get("localization")
    if localization:
        lines.append(f"Its heatmaps do not localise: Grad-CAM hits {localization['heatmap_hits']:.0%} of "
                     f"{localization['boxes']} radiologist boxes, random maps "
                     f"{localization['random_hits']:.0%} and a fixed blob at the image centre "
                     f"{localization['centre_hits']:.0%}.")
    flags = _flag_sentence(config)
    return _wrap(" ".join(lines)) + ("\n" + _wrap(flags) if flags else "")


def render_blocks(config: dict[str, Any]) -> dict[str, str]:
    """``{block name: Markdown}`` for a bundle's ``config.json`` (as a dict)."""
    try:
        return {"disclaimer": _disclaimer(config), "summary": _summary(config)}
    except KeyError as error:
        raise ReadmeBlockError(f"config.json lacks {error} needed for the README") from None


def read_blocks(text: str) -> dict[str, str]:
    """The current content of each block in a README's text."""
    blocks = {}
    for name in BLOCKS:
        match = _pattern(name).search(text)
        if match is None:
            raise ReadmeBlockError(f"README has no <!-- bundled-model:{name} --> block")
        blocks[name] = match.group(2)
    return blocks


def update_readme(path: Path, config: dict[str, Any]) -> None:
    """Rewrite ``path``'s blocks from ``config``."""
    text = path.read_text()
    read_blocks(text)  # every marker present, or stop before writing
    for name, body in render_blocks(config).items():
        text = _pattern(name).sub(lambda m, body=body: m.group(1) + body + m.group(3), text)
    path.write_text(text)
