"""The offline training pipeline.  Every top-level module is a command,
``python -m training.<name>`` with ``main(argv=None) -> int``, each reading its inputs
and writing a new folder.  In pipeline order:

1. ``split``       the NIH metadata split by patient into train / val / test
2. ``cache``       the images decoded once into a uint8 cache
3. ``tune``        an Optuna search over ``train``'s settings (validation only)
4. ``train``       one training run (also under ``torchrun``)
5. ``crossval``    the recipe over K patient folds, out-of-fold scores, a refit
6. ``calibrate``   probability scaling, operating points and the population on held-out logits
7. ``evaluate``    one split scored once: figures with patient-bootstrap intervals
8. ``bundle``      ``weights/`` in one step, running in turn:
   ``fit_ood`` (the feature-distance gate), ``fit_gate`` (the view head),
   ``evaluate`` (the test split), ``localize`` (heatmaps against radiologist boxes)
   and ``model_card`` (the card, from the measured reports)
9. ``examples``    the app's example radiographs from the test split
10. ``publish``    the bundle uploaded to the Hugging Face Hub

Beside the pipeline, ``source_audit`` checks the data before training: each source's
label mix, sharpness and brightness, and how a recipe's out-of-fold predictions treat each
source's normal films; ``recipe_rule`` applies the rule for choosing a recipe (the mean of
the per-folder out-of-fold figures) to cross-validated candidates, from their reports.

The commands share helpers grouped by concern: :mod:`training.data` (what is read),
:mod:`training.fitting` (how a network is fitted), :mod:`training.metrics` (figures
from labels and scores), :mod:`training.reports` (what a person reads) and
:mod:`training.gating` (the input gate's fit, for ``fit_ood`` and ``fit_gate``).  Imports
flow ``training -> xray_app``, never back.
"""
