"""How a network is fitted: typed configuration, the runtime (device, precision,
processes), the run folder, losses, weight averaging, the training loop (:func:`fit`),
provenance, the Optuna journal storage, and the probability scaling fitted afterwards."""
