"""The one flag rule: pathologies at their operating points, No Finding never beside one."""

from __future__ import annotations

import numpy as np

from xray_app.flags import flag_findings
from xray_app.labels import LABELS, NO_FINDING_INDEX

THRESHOLDS = np.full(len(LABELS), 0.5)


def test_pathology_flagged_at_or_above_its_threshold():
    p = np.full(len(LABELS), 0.1)
    p[0] = 0.5
    assert flag_findings(p, THRESHOLDS)[0], "a probability equal to the threshold is flagged"
    p[0] = 0.4999
    assert not flag_findings(p, THRESHOLDS)[0], "a probability below the threshold is not"


def test_no_finding_is_never_flagged_beside_a_pathology():
    p = np.full((2, len(LABELS)), 0.1)
    p[:, NO_FINDING_INDEX] = 0.9
    p[1, 3] = 0.7
    flags = flag_findings(p, THRESHOLDS)
    assert flags[0, NO_FINDING_INDEX], "No Finding above its threshold and alone is flagged"
    assert not flags[1, NO_FINDING_INDEX] and flags[1, 3], \
        "with a pathology flagged, No Finding must not be"


def test_percent_keeps_small_probabilities_and_thresholds_apart():
    from xray_app.flags import percent

    assert (percent(0.194), percent(0.0453), percent(0.00312)) == ("19.4%", "4.53%", "0.312%")
    assert percent(0.003) != percent(0.0034), "a finding at 0.34% and its threshold at 0.30% read apart"
    assert (percent(1e-9), percent(0.99999)) == ("<0.001%", ">99.9%"), "no exponent notation, no false 100%"
