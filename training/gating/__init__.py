"""The input gate's fit, shared by ``fit_ood`` and ``fit_gate``: which images it is fitted
and measured on (:mod:`.items`), images generated or varied in code (:mod:`.synthetic`),
what the gate reads of an image (:mod:`.features`), the view head (:mod:`.view_head`), the
feature distance (:mod:`.feature_distance`), the held-out figures per kind
(:mod:`.figures`) and the checkpoint rewritten with a gate (:mod:`.checkpoint`)."""
