r"""Unlearning on the embedded emoji data with planted knowledge: a backdoored client leaves.

  python experiments/unlearn.py --config=experiments/configs/unlearn_emoji.py --workdir=/tmp/ul
  python experiments/unlearn.py --config=experiments/configs/unlearn_emoji.py --workdir=/tmp/ul1 \
      --config.seed=1    # partition, LoRA init, sampling, shuffles and the request; not the split

The federation carries three independent plants (`config.plants`; ease_jax/data/plants.py):
client 1 (the largest client of the default partition) holds 130 copies of its own images with a
magenta/green checker blended over the whole image at opacity 0.3, captioned "rocket"; clients 0,
2 and 3 hold 80 copies with yellow/blue stripes blended the same way, captioned "volcano"; and
every client holds 20 copies of its emoji with inverted colours, captioned "inverted <own
caption>" (a concept the backbone never saw). The default request is client unlearning of
client 1: retrain never sees its trigger, so its attack success rate is what must go. Other
requests on the same trained model: `--config.unlearning.kind=sample
--config.unlearning.plant=sample_backdoor` (exactly the poisoned pairs of clients 0, 2, 3, which
stay), or `--config.unlearning.kind=concept --config.unlearning.plant=concept` (every inverted
copy; its concept accuracy is what must go). The earlier default, 8 px patches pasted in a
corner, is `trigger.size=8 trigger.opacity=1.0` on both backdoors with 200 / 240 copies.

`audit.population` models trained with and without D_f (one batched run each) give the
per-example audit (forget quality, LiRA); 0 turns it off.
"""
import ml_collections

from ease_jax import configs


def plants() -> dict:
  """The embedded federation's planted knowledge (BENCHMARKS.md, "Planting knowledge" and
  "Planting costs utility").

  Targets and the concept's style and size were chosen by the probes on the tuning seeds 0 and
  4. The triggers are blended (Chen et al. 2017) rather than pasted: at opacity 0.3 over the
  whole image both backdoors are learned from far fewer copies than the 8 px patches needed
  (200 / 240), and the fewer copies cost less clean R@1 (paired populations of 24: −1.5 test R@1
  strictly, against −3.7 for the patches; session 33). The sample copies (80) and opacity were
  chosen on the tuning seeds 0, 4, 5, 6 (session 32); the client copies (130, about 20% of client
  1's pairs) so that the per-example audit flags the trained model: LiRA's TPR@1%FPR counts the
  flagged share of client 1's pairs, and 100 copies left it at 0.188 on evaluation seed 3
  (session 32; 130 was then judged on seeds 1-3 and 7-9, session 33). `source_field` is listed
  at its default ('': copy any of the holder's images) so that a dotted override reaches it
  (`--config.plants.client_backdoor.source_field=skin_tone`)."""
  return dict(
      client_backdoor=dict(
          kind="backdoor", clients=(1,), num_pairs=130, target_caption="rocket",
          trigger=dict(pattern="checker", size=32, position="top_left", cell=2,
                       colors=((255, 0, 255), (0, 255, 0)), opacity=0.3),
          source_field=""),
      sample_backdoor=dict(
          kind="backdoor", clients=(0, 2, 3), num_pairs=80, target_caption="volcano",
          trigger=dict(pattern="stripes", size=32, position="bottom_right", cell=2,
                       colors=((255, 255, 0), (0, 0, 255)), opacity=0.3),
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
