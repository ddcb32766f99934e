"""Names of the networks a checkpoint may hold (no torch import: configs check them cheaply).

``resnet50`` is the product's network; ``tiny-resnet`` has the same layout at a few
thousand parameters, for tests of the training pipeline (:class:`xray_app.model.ChestXrayResNet`).
"""

ARCHITECTURE = "resnet50"  # the product's network
TINY_ARCHITECTURE = "tiny-resnet"
ARCHITECTURES = (ARCHITECTURE, TINY_ARCHITECTURE)
