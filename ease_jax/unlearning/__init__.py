"""Federated multimodal unlearning: requests, the retrain reference, EASE, and the pipeline.

* `requests`: `UnlearningRequest` (client / sample / concept) and its builders.
* `base`: the method interface `method(ctx: UnlearningContext) -> MethodResult` and the
  `METHODS` registry (`@register("name")`), which baselines extend.
* `retrain`: cached federated training and the retrain reference.
* `ease`: GSD + BKE + PFL and their ablations (registered as `ease`, `ease_no_lock`, ...).
* `pipeline`: `run_unlearning(config, workdir)`, the `experiments/unlearn.py` binary's body.
"""

from ease_jax.unlearning import baselines  # noqa: E402,F401  (registers the baseline methods)
