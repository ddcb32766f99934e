"""Figures computed from labels and scores: the one AUROC (:mod:`.auroc`), the one
patient bootstrap (:mod:`.bootstrap`), the headline over the 14 pathologies, and the
evaluation's per-class report and decision thresholds."""
