"""One-off measurements recorded in ``training/EXPERIMENTS.md``, kept so they can be rerun."""
