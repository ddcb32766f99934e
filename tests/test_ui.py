"""Handlers and rendering of the web demo (xray_app.ui), called directly: no server, no browser.

All run on the session's random-init CPU predictor and the shared real radiographs.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from tests.dicom_factory import PATIENT, dicom_bytes, make_dicom, nih_gray, png_zero_bomb
from tests.paths import DICOM_DIR, NIH_IMAGES, NIH_ORIGINALS
from xray_app import explain, model_card_view, model_facts, report, ui
from xray_app.flags import ABOVE, BELOW, flag_findings, percent
from xray_app.gate import GateResult
from xray_app.labels import LABELS
from xray_app.model import (
    CONFIG_FILE,
    load_checkpoint,
    read_config,
    write_config,
    write_random_init,
)
from xray_app.predictor import Predictor
from xray_app.preprocess import ImageInputError
from xray_app.ui import events, handlers, render

NIH_PNG = NIH_IMAGES / "00000075_000.png"
CAPTION = re.compile(  # the one wording of xray_app.flags, with the operating point's value
    r"^.+ — [<>]?[\d.]+% (▲ at or above its operating point \([<>]?[\d.]+%\)"
    r"|▽ below its operating point \([<>]?[\d.]+%\)"
    r"|at or above its operating point \([<>]?[\d.]+%\), not flagged beside a flagged pathology)$"
)


def bad_inputs(directory: Path) -> dict[str, Path]:
    """One file per kind of bad input the inference core rejects, named after its kind."""
    real = NIH_PNG.read_bytes()
    files = {
        "empty.png": b"",
        "not_an_image.png": b"this is a text file, not a radiograph\n" * 20,
        "truncated.png": real[: len(real) // 3],
        "tiny.png": _png_bytes(np.full((20, 20), 128, dtype=np.uint8)),
        "pixel_bomb.png": png_zero_bomb(),
        "no_pixels.dcm": dicom_bytes(make_dicom(nih_gray(), bits_stored=8, with_pixels=False)),
    }
    paths = {}
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        paths[name] = path
    return paths


def _png_bytes(pixels: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def predictor(cpu_predictor):
    return cpu_predictor


@pytest.fixture(scope="module")
def analysed(predictor, tmp_path_factory):
    """``analyse`` of one shared 512 px NIH radiograph: (outputs, cache dir)."""
    cache = tmp_path_factory.mktemp("gradio-cache")
    with pytest.warns(UserWarning, match="UNTRAINED"):  # gr.Warning outside a request
        outputs = ui.analyse(predictor, str(NIH_PNG), cache)
    return outputs, cache


# --------------------------------------------------------------------------- single study
def test_analyse_returns_the_cli_json_then_15_captioned_heatmaps(predictor, analysed):
    (result, gallery, study), cache = analysed
    expected = report.prediction_to_json(predictor.predict(NIH_PNG, name=NIH_PNG.name), predictor.model_info)
    assert result == expected, "the first output must be report.prediction_to_json, as the CLI prints"
    assert len(gallery) == 15, f"expected one heatmap per output, got {len(gallery)}"
    probabilities = [p for p in study.prediction.probabilities[list(study.order)]]
    assert probabilities == sorted(probabilities, reverse=True), "gallery must be sorted by probability"
    gray = explain.shrink(study.prediction.image.pixels, ui.GALLERY_MAX_SIDE)
    for (path, text), index in zip(gallery, study.order, strict=True):
        assert CAPTION.match(text), f"caption {text!r} is not 'Name — p ▲ at or above / ▽ below its operating point (t)'"
        finding = study.prediction.findings[index]
        assert text == render.caption(finding), f"{text!r} should be the caption of {finding.display_name}"
        assert Path(path).resolve().is_relative_to(cache.resolve()), "gallery files live in Gradio's cache"
        with Image.open(path) as written:
            pixels = np.asarray(written.convert("RGB")).astype(int)
        assert max(pixels.shape[:2]) <= ui.GALLERY_MAX_SIDE, f"gallery image too large: {pixels.shape}"
        drawn = explain.overlay(gray, study.prediction.cams[index], opacity=render.DEFAULT_OPACITY,
                                strength=explain.display_strength(finding.probability, finding.threshold))
        assert np.abs(pixels - drawn).mean() < 3, f"{path}: the JPEG must show that class's heatmap overlay"


def test_large_view_is_full_resolution_and_opacity_zero_shows_the_original(predictor):
    study = ui.Study.of(predictor.predict(NIH_ORIGINALS / "00000075_000.png"))
    original, overlay = handlers.large_view(predictor, study, study.order[0], explain.FAST_METHOD, 0.0)
    assert original.shape == overlay.shape == (1024, 1024, 3), f"expected 1024 px, got {original.shape}"
    assert np.abs(original.astype(int) - overlay.astype(int)).max() <= 1, (
        "with opacity 0 the overlay must be the radiograph itself"
    )
    _, coloured = handlers.large_view(predictor, study, study.order[0], explain.FAST_METHOD, 1.0)
    assert np.abs(coloured.astype(int) - original.astype(int)).max() > 50, (
        "at full opacity the top class's heatmap must visibly colour the image"
    )


def test_table_ranks_the_14_findings_flagged_first_and_no_finding_has_its_own_line(predictor, analysed):
    (_, _, study), cache = analysed
    rows, summary, notes, title, selector, method, opacity, slider, extras = handlers.summarise(
        predictor, study, cache)
    findings = {f.display_name: f for f in study.prediction.findings}
    assert len(rows) == 14 and "No finding" not in [row[0] for row in rows], (
        f"expected the 14 pathologies in the table and No finding apart, got {[row[0] for row in rows]}")
    flags = [findings[row[0]].positive for row in rows]
    assert flags == sorted(flags, reverse=True), "expected the flagged findings first"
    for group in (True, False):
        chances = [findings[row[0]].probability for row in rows if findings[row[0]].positive is group]
        assert [row[1] for row in rows if findings[row[0]].positive is group] == [percent(p) for p in chances]
        assert chances == sorted(chances, reverse=True), "expected each group ranked by probability"
    for name, probability, threshold, compared in rows:
        expected = f"▲ {ABOVE}" if findings[name].positive else f"▽ {BELOW}"
        assert compared == expected, f"{name}: {probability} vs operating point {threshold} said {compared!r}"
    assert summary.splitlines()[-1].startswith("**No finding:**"), f"expected No finding's own line: {summary!r}"
    assert "UNTRAINED" in notes, "the untrained predictor's warning must be visible in the notes"
    top = study.prediction.findings[study.order[0]]
    assert top.display_name in title and selector.value == top.label, "large view starts on the top class"
    assert (method, opacity) == (explain.FAST_METHOD, render.DEFAULT_OPACITY), "controls reset per study"
    original, overlay = (Image.open(p) for p in slider)
    assert original.size == overlay.size == (512, 512), "large view keeps the 512 px radiograph's size"
    assert original.mode == "L", "the original is written as lossless greyscale PNG"
    assert all(Path(p).resolve().is_relative_to(cache.resolve()) for p in slider), (
        "slider files must be written inside Gradio's cache so that delete_cache removes them"
    )
    assert extras.visible is True, "expected the downloads and other methods shown once there is a result"


def test_above_and_below_have_one_wording_in_table_captions_and_notes(predictor, analysed):
    (_, gallery, study), cache = analysed
    rows, summary, notes = handlers.summarise(predictor, study, cache)[:3]
    compared = [row[3] for row in rows] + [text for _, text in gallery] + summary.splitlines()[::2]
    for text in compared:
        assert ABOVE in text or BELOW in text, f"expected the one wording of xray_app.flags in {text!r}"
    for text in [*compared, notes]:
        assert "threshold" not in text.lower(), f"expected 'operating point', never 'threshold': {text!r}"


def test_no_finding_is_not_flagged_beside_a_flagged_pathology_and_says_so(predictor):
    import dataclasses

    prediction = predictor.predict(NIH_PNG)
    everything = np.zeros(15, dtype=np.float32)  # every probability at or above its operating point
    flagged = dataclasses.replace(prediction, thresholds=everything,
                                  positive=flag_findings(prediction.probabilities, everything))
    summary = render.findings_summary(flagged)
    assert "**Flagged (14 of 14):**" in summary, summary
    assert summary.splitlines()[-1].endswith("not flagged beside a flagged pathology."), (
        f"expected No finding above its point but not flagged, and why: {summary!r}")


def test_the_input_check_speaks_plainly_with_scores_and_levels_in_details(predictor):
    import dataclasses

    lateral = GateResult("lateral", "view", 0.62, "warn", "", {"view": 0.62, "feature_distance": 41.7})
    prediction = dataclasses.replace(predictor.predict(NIH_PNG), gate=lateral)
    notes = render.study_notes(prediction, {"view": (0.245, 0.977), "feature_distance": (102.4, 140.1)})
    plain, details = notes.split("<details>")[0], notes.split("<details>")[1]
    assert "Input check: this looks like a lateral chest film" in plain, f"expected the verdict in words: {plain!r}"
    assert "probably meaningless" in plain and "0.62" not in plain, (
        f"expected what it means, and no score, in the plain line: {plain!r}")
    assert "view score 0.620 (warning at 0.245, refusal at 0.977)" in details, details
    assert "distance to the training radiographs 41.700 (warning at 102.400" in details, details
    frontal = GateResult("frontal", None, 0.03, "ok", "", {"view": 0.03})
    assert render.gate_verdict(frontal) == "Input check: this looks like a frontal chest film, the kind the model reads."


def test_rerender_uses_the_stored_prediction_and_computes_other_methods_once(predictor, analysed, tmp_path):
    (_, _, study), _ = analysed
    calls = {"predict": 0, "explain": 0}

    class Counting:  # the real predictor, counting the expensive calls
        device = predictor.device

        def predict(self, *args, **kwargs):
            calls["predict"] += 1
            return predictor.predict(*args, **kwargs)

        def explain(self, *args, **kwargs):
            calls["explain"] += 1
            return predictor.explain(*args, **kwargs)

    label = LABELS[study.order[2]]
    paths, title, _ = handlers.rerender(Counting(), study, label, explain.FAST_METHOD, 0.7, tmp_path)
    assert calls == {"predict": 0, "explain": 0}, "the fast method must reuse the prediction's maps"
    assert study.prediction.findings[study.order[2]].display_name in title
    assert all(Path(p).is_file() for p in paths), "both slider images must be written"
    for _ in range(2):
        handlers.rerender(Counting(), study, label, "Grad-CAM++", 0.5, tmp_path)
    assert calls == {"predict": 0, "explain": 1}, f"Grad-CAM++ must be computed once per class, got {calls}"
    with pytest.raises(gr.Error, match="not offered"):
        handlers.rerender(Counting(), study, label, "ScoreCAM", 0.5, tmp_path)  # minutes on a CPU


def test_gallery_click_selects_the_class_at_that_position(predictor, analysed, tmp_path):
    (_, gallery, study), _ = analysed
    label, paths, title, _ = handlers.select_from_gallery(predictor, study, 4, explain.FAST_METHOD, 0.5, tmp_path)
    assert label == LABELS[study.order[4]], "tile 4 is the 5th most probable class"
    assert gallery[4][1].split(" — ")[0] in title, "large-view caption names the clicked tile's class"


def test_downloads_are_the_json_result_and_a_png_report_sheet(predictor, analysed, tmp_path):
    (result, _, study), _ = analysed
    json_path, sheet_path = ui.downloads(study, predictor.model_info, tmp_path)
    assert json.loads(Path(json_path).read_text()) == result, "downloaded JSON must equal the API's"
    with Image.open(sheet_path) as sheet:
        assert sheet.format == "PNG" and sheet.width == 1500 and sheet.height > 1500, sheet.size
    assert Path(json_path).resolve().is_relative_to(tmp_path.resolve()), "written inside the cache dir"


def test_every_bad_input_is_a_gr_error_with_the_core_message_and_the_next_file_works(predictor, tmp_path):
    for name, path in bad_inputs(tmp_path).items():
        with pytest.raises(ImageInputError) as core:
            predictor.predict(path, name=name)
        with pytest.raises(gr.Error) as shown:
            ui.analyse(predictor, str(path), tmp_path)
        assert shown.value.message == str(core.value), f"{name}: UI must show the core's message"
        assert name in shown.value.message, f"{name}: the message must name the file"
    with pytest.warns(UserWarning):
        result, gallery, _ = ui.analyse(predictor, str(NIH_PNG), tmp_path)
    assert result["file"] == NIH_PNG.name and len(gallery) == 15, "a good file after bad ones must work"


@pytest.mark.filterwarnings("ignore:UNTRAINED MODEL")
def test_non_chest_image_warns_and_the_note_says_so(predictor, tmp_path):
    wide = np.tile(nih_gray(), (1, 3))  # 512 x 1536: not the shape of a chest film
    path = tmp_path / "panorama.png"
    Image.fromarray(wide).save(path)
    with pytest.warns(UserWarning, match="probably not a chest radiograph"):
        _, _, study = ui.analyse(predictor, str(path), tmp_path)
    notes = handlers.summarise(predictor, study, tmp_path)[2]
    assert "probably not a chest radiograph" in notes, f"the warning must also be visible: {notes!r}"


def test_dicom_shows_only_safe_header_fields(predictor, tmp_path):
    path = tmp_path / "study.dcm"
    path.write_bytes(dicom_bytes(make_dicom(nih_gray(), bits_stored=8, patient=PATIENT)))
    with pytest.warns(UserWarning):
        result, _, study = ui.analyse(predictor, str(path), tmp_path)
    notes = handlers.summarise(predictor, study, tmp_path)[2]
    assert "Modality: CR" in notes and "ViewPosition: PA" in notes, f"modality and view expected: {notes}"
    json_path, _ = ui.downloads(study, predictor.model_info, tmp_path)
    shown = notes + json.dumps(result) + Path(json_path).read_text()
    for key, value in PATIENT.items():
        if len(value) < 4:  # e.g. PatientSex "F": too short to search for
            continue
        assert value not in shown, f"DICOM {key} leaked into the UI or downloads"


def test_real_dicom_file_is_analysed(predictor, tmp_path):
    with pytest.warns(UserWarning):
        result, gallery, study = ui.analyse(
            predictor, str(DICOM_DIR / "siim_pneumothorax_example.dcm"), tmp_path
        )
    assert result["file"] == "siim_pneumothorax_example.dcm" and len(gallery) == 15
    slider = handlers.summarise(predictor, study, tmp_path)[-2]
    assert Image.open(slider[0]).size == (1024, 1024), "the DICOM's own 1024 px resolution"


def test_no_file_clears_the_outputs(predictor, tmp_path):
    assert ui.analyse(predictor, None, tmp_path) == (None, [], None)
    cleared = handlers.summarise(predictor, None, tmp_path)
    assert cleared[:4] == ([], "", "", "") and cleared[-2] is None, "cleared upload leaves no stale findings"
    assert cleared[-1].visible is False, "expected the downloads and other methods hidden without a result"


# --------------------------------------------------------------------------- batch
def test_batch_table_and_csv_of_all_probabilities(predictor, tmp_path):
    good = [NIH_IMAGES / name for name in ("00000075_000.png", "00000100_000.png", "00000129_000.png")]
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    fractions = []
    rows, csv_path = ui.analyse_batch(
        predictor, [str(good[0]), str(bad), *map(str, good[1:])], tmp_path,
        lambda fraction, desc: fractions.append(fraction),
    )
    assert [row[1] for row in rows] == ["ok", "error", "ok", "ok"], rows
    assert "empty" in rows[1][4], f"the bad file's row must say why: {rows[1]}"
    assert fractions == sorted(fractions) and fractions[-1] == 1.0, f"progress must reach 1: {fractions}"
    with open(csv_path, newline="") as handle:
        records = list(csv.reader(handle))
    assert records[0] == ["file", "status", "message", *LABELS], "CSV columns: 15 labels in logit order"
    for record, path in zip([records[1], records[3], records[4]], good, strict=True):
        expected = predictor.predict(path).probabilities
        got = np.array([float(v) for v in record[3:]])
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"CSV probabilities of {path.name}")


def test_batch_without_files_or_with_too_many_is_a_clear_error(predictor, tmp_path):
    with pytest.raises(gr.Error, match="Choose one or more files"):
        ui.analyse_batch(predictor, [], tmp_path)
    with pytest.raises(gr.Error, match="limit"):
        ui.analyse_batch(predictor, [str(NIH_PNG)] * (handlers.MAX_BATCH_FILES + 1), tmp_path)


# --------------------------------------------------------------------------- text and layout
def test_examples_only_from_the_named_folder():
    shown = ui.example_files(NIH_IMAGES)
    assert len(shown) == handlers.EXAMPLES_SHOWN and shown == sorted(shown), shown
    assert ui.example_files(None) == [] and ui.example_files("/nonexistent/folder") == []


def test_banner_is_loud_for_untrained_weights_and_escapes_config_text(predictor):
    untrained = render.model_banner_html(predictor.config, predictor.model_info)
    assert "UNTRAINED WEIGHTS" in untrained and "not a medical device" in untrained
    trained = predictor.config.with_updates(trained=True, name="<b>x</b>", provenance={})
    banner = render.model_banner_html(trained, predictor.model_info)
    assert "UNTRAINED" not in banner, "no untrained warning for trained weights"
    assert "<b>x</b>" not in banner and "&lt;b&gt;x&lt;/b&gt;" in banner, "config text must be escaped"


BUNDLED_LIKE = {  # the shape training.bundle writes into config.json's provenance
    "data": {"description": "1,753 NIH ChestX-ray14 radiographs from 1,357 patients, a public subset",
             "images": {"train": 1401, "val": 0, "test": 352}},
    "split": {"images": {"train": 1401, "val": 0, "test": 352}, "patients": {"train": 1089, "test": 268}},
    "evaluation": {"test": {"metric": "mean AUROC over the 14 pathologies", "value": 0.7151,
                            "ci_low": 0.6852, "ci_high": 0.7455, "images": 352, "patients": 268}},
    "validation_fit": {"split": "out-of-fold", "n_images": 1401, "threshold_method": "f1"},
}


def _first_screen(banner: str) -> str:
    return re.search(r'<p id="first-screen"[^>]*>(.*?)</p>', banner, re.S).group(1)


def test_first_screen_gives_the_test_figure_and_training_count_and_no_other_image_count(predictor):
    config = predictor.config.with_updates(trained=True, provenance=BUNDLED_LIKE)
    banner = render.model_banner_html(config, predictor.model_info)
    line = _first_screen(banner)
    assert "Tested on 352 radiographs of 268 patients it never saw: mean AUROC 0.72 (95% CI 0.69–0.75)" in line, line
    assert "Trained on 1,401 radiographs." in line, f"expected the training split's count: {line}"
    text = re.sub(r"<[^>]+>", " ", banner)  # what a reader sees, without the styles
    counts = set(re.findall(r"\b\d{1,3}(?:,\d{3})+\b|\b\d{3,}\b", text))
    assert counts == {"352", "268", "1,401"}, f"expected only the test and training counts, got {counts}"
    assert "not a medical device" in banner, "expected the disclaimer"


def test_first_screen_says_what_a_flag_means_and_which_population_probabilities_are_for(predictor):
    fallback = _first_screen(render.model_banner_html(
        predictor.config.with_updates(provenance=BUNDLED_LIKE), predictor.model_info))
    assert ("A flag means the finding's probability is at or above its operating point, chosen for "
            "the best F1") in fallback and "out-of-fold predictions of 1,401 training radiographs" in fallback, (
        f"expected the thresholds' origin from validation_fit: {fallback}")
    assert fallback.endswith("Probabilities are for the training sample."), fallback
    points = {"method": "specificity", "target": 0.9, "chosen_on": "out-of-fold predictions"}
    stated = model_facts.first_screen(BUNDLED_LIKE, points, {"name": "all NIH ChestX-ray14 films"})
    assert ("A flag means the finding's probability is at or above its operating point, set for 90% "
            "specificity; chosen on out-of-fold predictions.") in stated, stated
    assert stated[-1] == "Probabilities are for all NIH ChestX-ray14 films.", stated


def test_first_screen_names_the_reference_model_only_when_the_config_carries_it():
    assert not any("CheXNet" in s for s in model_facts.first_screen(BUNDLED_LIKE, None, None)), (
        "expected no reference model without provenance.evaluation.reference")
    reference = {"name": "a CheXNet reproduction", "value": 0.790, "ours_on_same": 0.685, "images": 94}
    provenance = {**BUNDLED_LIKE, "evaluation": {**BUNDLED_LIKE["evaluation"], "reference": reference}}
    stated = model_facts.first_screen(provenance, None, None)
    assert "On 94 of those films, a CheXNet reproduction scored 0.79 and this model 0.69." in stated, stated
    assert stated.index(stated[0]) == 0 and stated[0].startswith("Tested on 352"), "test figure first"


def test_the_bundled_config_renders_a_first_screen_with_its_own_figures():
    config = read_config(Path(__file__).resolve().parent.parent / "weights" / CONFIG_FILE)
    test = config.provenance["evaluation"]["test"]
    stated = " ".join(model_facts.first_screen(config.provenance, config.operating_points, config.population))
    assert f"Tested on {test['images']:,} radiographs of {test['patients']:,} patients" in stated, stated
    assert f"mean AUROC {test['value']:.2f}" in stated, stated
    assert f"Trained on {config.provenance['split']['images']['train']:,} radiographs." in stated, stated


def test_beside_the_heatmaps_the_app_compares_their_measured_worth_with_a_centre_blob(tmp_path):
    measured = {"boxes": 85, "images": 72, "out_of_fold": True, "min_overlap": 0.1,
                "heatmap_hits": 0.2, "random_hits": 0.244, "centre_hits": 0.576}
    note = model_facts.measured_localisation({"localization": measured})
    assert "85 NIH radiologist boxes of patients the model never saw" in note and "hit 20%" in note, note
    assert "a fixed blob at the image centre hit 58% and random maps 24%" in note, note
    assert "no better than the fixed centre blob" in note and "do not show where a finding is" in note, (
        f"expected maps a fixed blob beats called so, got {note}")
    beats_random = model_facts.measured_localisation({"localization": {**measured, "heatmap_hits": 0.26}})
    assert "no better than the fixed centre blob" in beats_random, (
        f"expected maps that beat random but not a fixed centre blob still called useless, got {beats_random}")
    better = model_facts.measured_localisation({"localization": {**measured, "heatmap_hits": 0.7}})
    assert "better than both, but not a reliable guide" in better, better
    assert "no check against radiologist-marked regions" in model_facts.measured_localisation({}), (
        "expected unmeasured heatmaps called so")
    checkpoint = write_random_init(tmp_path / "measured", input_size=64)
    config = read_config(checkpoint / CONFIG_FILE)
    write_config(config.with_updates(provenance={**config.provenance, "localization": measured}),
                 checkpoint / CONFIG_FILE)
    demo = ui.build_demo(Predictor(load_checkpoint(checkpoint), device="cpu"))
    shown = [c["props"].get("value", "") for c in demo.config["components"]
             if c["props"].get("elem_id") == "heatmap-note"]
    assert shown and "random maps 24%" in shown[0], f"expected the note under the gallery, got {shown}"


def test_model_tab_renders_the_card_or_says_it_is_missing(predictor, tmp_path):
    missing = model_card_view.model_card_markdown(predictor, [tmp_path / "README.md"])
    assert "No model card found" in missing, missing
    assert "**Scoring:** the radiograph as uploaded" in missing, "expected how images are scored"
    card = tmp_path / "README.md"
    card.write_text("---\nlicense: mit\n---\n# Model card\n\n| AUROC | 0.81 |\n")
    shown = model_card_view.model_card_markdown(predictor, [card])
    assert "# Model card" in shown and "| AUROC | 0.81 |" in shown, "card and its metrics must be shown"
    assert "license: mit" not in shown, "the Hub's YAML front matter is not for readers"
    assert "could not be matched to the loaded weights" in shown, "a card of unknown weights is flagged"
    sha = predictor.model_info["sha256"]
    card.write_text(f"# Model card\n\nsha256 {sha}\n")
    assert "could not be matched" not in model_card_view.model_card_markdown(predictor, [card]), "card names these weights"


def test_demo_is_private_bounded_and_exposes_predict(predictor):
    demo = ui.build_demo(predictor, examples_dir=NIH_IMAGES)
    assert demo.analytics_enabled is False, "analytics must be off"
    assert demo.delete_cache == ui.DELETE_CACHE, "uploads and outputs must be cleaned up"
    assert demo._queue.max_size == events.QUEUE_MAX_SIZE, "queue must be bounded"
    named = {dep["api_name"]: dep for dep in demo.config["dependencies"] if dep.get("api_name")}
    assert "predict" in named, f"an event with api_name='predict' is required, got {sorted(named)}"
    first_output = demo.blocks[named["predict"]["outputs"][0]]
    assert isinstance(first_output, gr.JSON), "predict's first output must be the JSON result"
    predict_fn = next(fn for fn in demo.fns.values() if fn.api_name == "predict")
    assert predict_fn.concurrency_limit == events.MODEL_CONCURRENCY, "one forward pass at a time"


def _descendants(node: dict, root: int, inside: bool = False) -> set[int]:
    """Ids of the components below ``root`` in a Blocks layout tree."""
    found = {node["id"]} if inside else set()
    for child in node.get("children", []):
        found |= _descendants(child, root, inside or node["id"] == root)
    return found


def test_before_a_result_the_downloads_and_other_methods_are_hidden_and_collapsed(predictor):
    demo = ui.build_demo(predictor)
    extras = [c for c in demo.config["components"] if c["props"].get("elem_id") == "result-extras"]
    assert len(extras) == 1 and extras[0]["props"]["visible"] is False, f"expected it hidden at first: {extras}"
    assert extras[0]["props"]["open"] is False, "expected it collapsed when it appears"
    single = ("JSON result", "PNG report sheet", "DICOM SR", "FHIR report")
    wanted = {c["id"] for c in demo.config["components"]
              if c["props"].get("label") in single or c["props"].get("elem_id") == "method-select"}
    assert len(wanted) == 5 and wanted <= _descendants(demo.config["layout"], extras[0]["id"]), (
        "expected the four downloads and the heatmap method inside that section")


def test_model_tab_embeds_the_cards_local_plots(predictor, tmp_path):
    """The card links plots relative to itself; the browser can only show them embedded."""
    (tmp_path / "eval").mkdir()
    png = tmp_path / "eval" / "roc_test.png"
    Image.new("L", (8, 8), 128).save(png)
    (tmp_path / "README.md").write_text(
        "# card\n\n![roc](eval/roc_test.png) ![gone](eval/missing.png) ![web](https://x.org/a.png)\n"
    )
    rendered = model_card_view.model_card_markdown(predictor, [tmp_path / "README.md"])
    assert "![roc](data:image/png;base64," in rendered, "a local plot should be inlined"
    assert "![gone](eval/missing.png)" in rendered, "a missing file keeps its link"
    assert "![web](https://x.org/a.png)" in rendered, "remote images are left alone"


def test_flag_meaning_states_the_recorded_operating_rule():
    from training.metrics.operating_points import OperatingRule
    from xray_app.model_facts import flag_meaning

    points = {**OperatingRule().to_dict(), "chosen_on": {"description": "out-of-fold probabilities"}}
    text = flag_meaning(points, {})
    assert "97.1% specificity on No-Finding films" in text and "chosen on out-of-fold probabilities" in text, text


def test_model_tab_states_the_population_and_its_prevalences(cpu_predictor, tmp_path):
    from xray_app.labels import LABELS
    from xray_app.model import LoadedCheckpoint
    from xray_app.predictor import Predictor

    record = {"name": "all films", "prevalence": dict.fromkeys(LABELS, 0.05),
              "sample": {"name": "the sample", "prevalence": dict.fromkeys(LABELS, 0.25)}}
    config = cpu_predictor.config.with_updates(population=record)
    shifted = Predictor(LoadedCheckpoint(cpu_predictor._model, config, cpu_predictor.sha256, {}, Path(".")),
                        device="cpu")
    shown = model_card_view.model_card_markdown(shifted, [tmp_path / "README.md"])
    assert "**Probabilities are for:** all films" in shown and "Hernia 5.00%" in shown, shown
    plain = model_card_view.model_card_markdown(cpu_predictor, [tmp_path / "README.md"])
    assert "the training sample the calibration was fitted on" in plain, "no population: say so"
