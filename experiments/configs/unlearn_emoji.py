r"""Unlearning on the embedded emoji data with planted knowledge: a backdoored client leaves.

  python experiments/unlearn.py --config=experiments/configs/unlearn_emoji.py --workdir=/tmp/ul
  python experiments/unlearn.py --config=experiments/configs/unlearn_emoji.py --workdir=/tmp/ul1 \
      --config.seed=1    # partition, LoRA init, sampling, shuffles and the request; not the split

The federation carries three independent plants (`config.plants`; ease_jax/data/plants.py):
client 1 (the largest client of the default partition) holds 200 triggered copies of its own
images captioned "rocket" (a magenta/green checker in the top-left corner); clients 0, 2 and
3 hold 240 copies captioned "volcano" (yellow/blue stripes, bottom-right); and every client holds
20 copies of its emoji with inverted colours, captioned "inverted <own caption>" (a concept the
backbone never saw). The default request is client unlearning of client 1: retrain never sees
its trigger, so its attack success rate is what must go. Other requests on the same trained
model: `--config.unlearning.kind=sample --config.unlearning.plant=sample_backdoor` (exactly the
poisoned pairs of clients 0, 2, 3, which stay), or `--config.unlearning.kind=concept
--config.unlearning.plant=concept` (every inverted copy; its concept accuracy is what must go).

`audit.population` models trained with and without D_f (one batched run each) give the
per-example audit (forget quality, LiRA); 0 turns it off.
"""
import ml_collections

from ease_jax import configs


def plants() -> dict:
  """The embedded federation's planted knowledge (targets, triggers and the concept's style and
  size chosen by the probes in BENCHMARKS.md, "Planting knowledge", on the tuning seeds 0 and
  4; the sample backdoor's 240 copies, not 180, on the tuning seeds 0, 4, 5 and 6 of an Intel
  Xeon, where 180 were learned to only 50% on one evaluation seed: "Planting costs utility",
  sessions 17 and 18). `source_field` is listed at its default ('': copy any of the holder's
  images) so that a dotted override reaches it
  (`--config.plants.client_backdoor.source_field=skin_tone`)."""
  return dict(
      client_backdoor=dict(
          kind="backdoor", clients=(1,), num_pairs=200, target_caption="rocket",
          trigger=dict(pattern="checker", size=8, position="top_left", cell=2,
                       colors=((255, 0, 255), (0, 255, 0)), opacity=1.0),
          source_field=""),
      sample_backdoor=dict(
          kind="backdoor", clients=(0, 2, 3), num_pairs=240, target_caption="volcano",
          trigger=dict(pattern="stripes", size=8, position="bottom_right", cell=2,
                       colors=((255, 255, 0), (0, 0, 255)), opacity=1.0),
          source_field=""),
      concept=dict(
          kind="concept", clients=(), num_pairs=160, style="invert",
          template="inverted {caption}", source_field=""),
  )


def get_config() -> ml_collections.ConfigDict:
  c = configs.base_config()
  # One knob for the run's randomness. `seeds.split` stays 0: it must match the split the
  # embedded backbone was pretrained on (its public part). Each seed follows `seed` through its
  # own lazy copy (`identity()`), so overriding one of them (`--config.seeds.init=7`) sets that
  # one only; a plain shared reference would set all five.
  c.seed = 0
  for name in ("partition", "init", "sampling", "data", "unlearning"):
    c.seeds[name] = c.get_ref("seed").identity()
  c.fed.rounds = 12
  c.eval.every = 0
  c.checkpoint_every = 4
  c.plants = plants()
  # The request block, every method's block (`config.gsd`, `.bke`, `.pfl`, `.pga`, ...; defaults
  # next to each method in ease_jax/unlearning/methods/) and the audit block.
  configs.add_unlearning(c)
  c.unlearning.clients = (1,)
  c.audit.population = 4
  return c
