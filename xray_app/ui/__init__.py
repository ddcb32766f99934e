"""The clinician web demo: ``build_demo(predictor) -> gr.Blocks``.

Thin by design: every number comes from the :class:`~xray_app.predictor.Predictor` it
receives, every sentence about the model from :mod:`xray_app.model_facts`, every file
from :mod:`xray_app.exports`.  The package is split by what changes together:

* :mod:`~xray_app.ui.layout`: the page, declarative (``build_demo``, ``launch_options``);
* :mod:`~xray_app.ui.events`: which handler runs on which event, and the queues;
* :mod:`~xray_app.ui.handlers`: the event handlers, plain functions tests call directly;
* :mod:`~xray_app.ui.render`: text, table rows and images drawn from a prediction.
"""

from xray_app.ui.handlers import (
    Study,
    analyse,
    analyse_batch,
    downloads,
    example_credit,
    example_files,
    report_downloads,
)
from xray_app.ui.layout import DELETE_CACHE, build_demo, launch_options
from xray_app.ui.render import GALLERY_MAX_SIDE

__all__ = [
    "DELETE_CACHE",
    "GALLERY_MAX_SIDE",
    "Study",
    "analyse",
    "analyse_batch",
    "build_demo",
    "downloads",
    "example_credit",
    "example_files",
    "launch_options",
    "report_downloads",
]
