"""Federated multimodal unlearning: requests, the retrain reference, the methods, the experiments.

* `requests`: `UnlearningRequest` (client / sample / concept) and its builders.
* `base`: the method interface `method(ctx: UnlearningContext) -> MethodResult`.
* `methods/`: one module per method (EASE and its ablations, the baselines) and the registry.
* `common`: what several methods share; `projection`: per-module projections (EASE's P_u).
* `retrain`: cached federated training and the retrain reference.
* `cell`: one experiment cell (setup → trained model → request → retrain → methods → rows),
  shared by `pipeline` (the unlearn binary) and `benchmark` (methods × requests × seeds).
"""
