"""The federated engine, as pure functions over pytrees.

* `local`: the one local-steps primitive (`local_steps`) and the holders' update.
* `backends`: a group of clients at once (vmap / chunked / sequential / sharded / auto).
* `schedules`: host-side round inputs (client sampling, padded local schedules, `RoundPlan`).
* `history`: the server's store of transmitted updates.
* `algorithms`: FedAvg and its variants as `init` / `apply` pairs; `vmapped` populations.
* `driver`: runs an algorithm for R rounds with checkpoints, metrics and evaluation.
"""
from ease_jax.data.device import DeviceData, Embedder, embed, embedder_for, matched_cosines
from ease_jax.federated.algorithms import (FedAvgOptions, FederatedAlgorithm, ServerState,
                                           all_finite, fedavg, fedavg_algorithm, init_server,
                                           server_optimizer, vmapped)
from ease_jax.federated.backends import BACKENDS, make_round_fn, resolve_backend
from ease_jax.federated.history import UpdateHistory, flatten_deltas, num_params, unravel_fn
from ease_jax.federated.local import (Batches, LocalSteps, LossFn, clip_objective,
                                      holders_update, local_steps, tree_where, weighted_mean)
from ease_jax.federated.schedules import (STACKED_AXES, ClientSchedules, RoundInputs, RoundPlan,
                                          StackedPlan,
                                          build_client_schedules, cycled_batches,
                                          num_local_steps, sample_clients)
