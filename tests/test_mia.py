"""Membership inference: the Mann–Whitney AUC, matched non-members and the per-pair scores."""
import csv
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from conftest import tiny_config
from ease_jax import builders
from ease_jax import federated
from ease_jax import losses
from ease_jax import mia
from ease_jax.data import device as device_lib


def brute_force_auc(m, n):
  m, n = np.asarray(m)[:, None], np.asarray(n)[None, :]
  return float(np.mean((m > n) + 0.5 * (m == n)))


@pytest.mark.parametrize("seed", range(4))
def test_auc_matches_brute_force_and_scipy(seed):
  r = np.random.default_rng(seed)
  # Rounded scores: many ties, unequal sizes.
  m = np.round(r.normal(0.3, 1.0, 37), 1)
  n = np.round(r.normal(0.0, 1.0, 53), 1)
  a = mia.auc(m, n)
  assert a == pytest.approx(brute_force_auc(m, n), abs=1e-12)
  u = scipy.stats.mannwhitneyu(m, n, alternative="two-sided").statistic
  assert a == pytest.approx(u / (len(m) * len(n)), abs=1e-12)


def test_auc_edge_cases():
  assert mia.auc([2, 3], [0, 1]) == 1.0
  assert mia.auc([0, 1], [2, 3]) == 0.0
  assert mia.auc([1, 1], [1, 1, 1]) == 0.5
  with pytest.raises(ValueError, match="members"):
    mia.auc([], [1.0])
  with pytest.raises(ValueError, match="finite"):
    mia.auc([np.nan], [1.0])


def test_matched_nonmembers_follow_the_concept_mix():
  labels = np.array(["a"] * 50 + ["b"] * 50 + ["c"] * 50)
  members = np.r_[0:10, 50:55]           # 10 'a', 5 'b'
  cands = np.r_[20:40, 70:90, 120:150]   # 20 a, 20 b, 30 c
  distinct_candidates = lambda picked, cands: (
      len(np.unique(picked)) == len(picked) and np.all(np.isin(picked, cands)))
  picked = mia.matched_nonmembers(members, cands, labels, seed=0)
  assert len(picked) == 15 and distinct_candidates(picked, cands)
  assert (labels[picked] == "a").sum() == 10 and (labels[picked] == "b").sum() == 5
  # Too few of a label: the rest is filled from other candidates, same count.
  cands = np.r_[40:45, 60:100]
  picked = mia.matched_nonmembers(np.r_[0:30], cands, labels, seed=0)
  assert len(picked) == 30 and (labels[picked] == "a").sum() == 5
  assert distinct_candidates(picked, cands)
  # Fewer candidates than members: all candidates.
  np.testing.assert_array_equal(
      mia.matched_nonmembers(np.arange(10), np.arange(20, 25), None), np.arange(20, 25))
  # Without labels: distinct candidates, drawn from the seed's stream.
  picked = mia.matched_nonmembers(np.arange(10), np.arange(20, 60), None, seed=1)
  assert len(picked) == 10 and distinct_candidates(picked, np.arange(20, 60))
  np.testing.assert_array_equal(
      picked, mia.matched_nonmembers(np.arange(10), np.arange(20, 60), None, seed=1))
  assert not np.array_equal(
      picked, mia.matched_nonmembers(np.arange(10), np.arange(20, 60), None, seed=2))
  with pytest.raises(ValueError, match="empty"):
    mia.matched_nonmembers(np.arange(3), np.array([], int), None)


def test_pair_scores_and_membership_auc(tiny_setup):
  setup = tiny_setup
  members, nonmembers = setup.texts_of(setup.client_images[0]), setup.texts_of(setup.test_images)
  gallery = np.sort(np.concatenate([members, nonmembers]))
  cos = mia.pair_scores(setup.model, setup.backbone, None, setup.data, members, "cosine", gallery)
  loss = mia.pair_scores(setup.model, setup.backbone, None, setup.data, members, "loss", gallery)
  # Brute force: per-pair symmetric InfoNCE over the gallery.
  ti = np.asarray(setup.data.text_image)
  ie, te = federated.embed(setup.model, setup.backbone, None, setup.data, ti[gallery], gallery)
  logits = np.asarray(losses.contrastive_logits(jnp.asarray(ie), jnp.asarray(te),
                                                setup.backbone["logit_scale"]))
  pos = np.searchsorted(gallery, members)
  lse = lambda x, ax: np.log(np.sum(np.exp(x - x.max(ax, keepdims=True)), ax)) + x.max(ax)
  want = -(0.5 * (lse(logits[pos], 1) + lse(logits[:, pos], 0)) - logits[pos, pos])
  np.testing.assert_allclose(loss, want, rtol=1e-4, atol=1e-4)
  un = ie / np.linalg.norm(ie, axis=1, keepdims=True)
  tn = te / np.linalg.norm(te, axis=1, keepdims=True)
  np.testing.assert_allclose(cos, np.sum(un[pos] * tn[pos], 1), atol=1e-5)
  out = mia.membership_auc(setup.model, setup.backbone, None, setup.data, members, nonmembers)
  assert out["n_members"] == len(members) and out["n_nonmembers"] == len(nonmembers)
  # Against a brute-force count over the gallery's matched cosines (members vs non-members).
  cos_all = np.sum(un * tn, 1)
  s_m, s_n = cos_all[pos], cos_all[np.searchsorted(gallery, nonmembers)]
  brute = np.mean(s_m[:, None] > s_n[None, :]) + 0.5 * np.mean(s_m[:, None] == s_n[None, :])
  assert out["auc"] == pytest.approx(brute, abs=1e-9)
  assert out["member_score"] == pytest.approx(s_m.mean(), abs=1e-5)
  assert out["nonmember_score"] == pytest.approx(s_n.mean(), abs=1e-5)
  swapped = mia.membership_auc(setup.model, setup.backbone, None, setup.data, nonmembers, members)
  assert swapped["auc"] == pytest.approx(1.0 - out["auc"], abs=1e-9)
  with pytest.raises(ValueError, match="overlap"):
    mia.membership_auc(setup.model, setup.backbone, None, setup.data, members, members)
  with pytest.raises(ValueError, match="Unknown MIA score"):
    mia.pair_scores(setup.model, setup.backbone, None, setup.data, members, "entropy")
  for gallery_texts in (nonmembers, nonmembers[:0]):
    with pytest.raises(ValueError, match="must contain every text"):
      mia.pair_scores(setup.model, setup.backbone, None, setup.data, members, "cosine",
                      gallery_texts)


def test_embedder_equals_embed_bit_for_bit_and_embeds_each_row_once(tiny_setup, monkeypatch):
  """The row evaluation shares one `Embedder` across its metrics: its embeddings must be those
  of `embed` at the same batch size exactly, whatever batch a row was first computed in, and
  nothing is embedded twice."""
  setup = tiny_setup
  fresh = builders.init_trainable(setup, tiny_config())
  noise = jax.random.split(jax.random.key(3), len(jax.tree.leaves(fresh)))
  trainable = jax.tree.unflatten(jax.tree.structure(fresh), [
      x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
      for x, k in zip(jax.tree.leaves(fresh), noise)])  # B != 0: the adapters act
  rng = np.random.default_rng(0)
  num_images, num_texts = setup.dataset.num_images, len(setup.dataset.text_image)
  asked = []
  real_embed = device_lib.embed
  def counting_embed(model, backbone, tree, data, images, texts, batch_size):
    asked.append((np.asarray(images), np.asarray(texts)))
    return real_embed(model, backbone, tree, data, images, texts, batch_size)
  monkeypatch.setattr(device_lib, "embed", counting_embed)
  embedder = federated.Embedder(setup.model, setup.backbone, trainable, setup.data, 8)
  for _ in range(4):  # overlapping requests, repeats inside one, different sizes
    images = rng.integers(0, num_images, int(rng.integers(1, 30)))
    texts = rng.integers(0, num_texts, int(rng.integers(0, 30)))
    got_i, got_t = embedder(images, texts)
    want_i, want_t = real_embed(setup.model, setup.backbone, trainable, setup.data, images,
                                texts, 8)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_t, want_t)
  for i, side in enumerate(("images", "texts")):
    computed = np.concatenate([a[i] for a in asked])
    assert len(computed) == len(np.unique(computed)), f"{side} embedded twice"
  assert embedder(images[:3], texts[:0])[0].shape == (3, want_i.shape[1])
  assert embedder(images[:0], texts[:0])[1].shape == (0, want_t.shape[1])
  # An id past either end is refused: on device it would read the last row, or wrap.
  with pytest.raises(ValueError, match=rf"text id\(s\) out of range \[0, {num_texts}\)"):
    embedder(images[:2], np.array([0, num_texts]))
  with pytest.raises(ValueError, match=r"1 image id\(s\) out of range .*\[-1\]"):
    device_lib.embed(setup.model, setup.backbone, trainable, setup.data, [-1, 0], [], 8)
  # A shared embedder of another model is refused, not silently used.
  with pytest.raises(ValueError, match="another trainable"):
    mia.gallery_scores(setup.model, setup.backbone, fresh, setup.data, texts, "cosine", embedder)
  # So does a benchmark cell's row (its evaluation and audit share one), at its eval batch size.
  from ease_jax.unlearning import cell as cell_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.eval.batch_size = 16
  fake_cell = types.SimpleNamespace(setup=setup, config=config)
  assert cell_lib.Cell.embedder(fake_cell, trainable, embedder) is embedder
  assert cell_lib.Cell.embedder(fake_cell, trainable).batch_size == 16
  with pytest.raises(ValueError, match="another trainable"):
    cell_lib.Cell.embedder(fake_cell, fresh, embedder)


def test_benchmark_aggregation_and_resume_rows(tmp_path):
  from ease_jax.unlearning import benchmark
  rows = []
  for seed, (f, ref_f, auc) in enumerate([(30.0, 20.0, 0.6), (34.0, 22.0, 0.7)]):
    for method, fr, a, wall in (("retrain", ref_f, 0.5, 100.0), ("m", f, auc, 10.0)):
      r = {f"{s}/{k}": fr for s in benchmark.SPLITS
           for k in ("i2t_r1", "t2i_r1", "i2t_rprec", "mean_r1")}
      rows.append(dict(r, scenario="client", seed=seed, method=method, mia_auc=a,
                       wall_time_s=wall))
  table = benchmark.aggregate(rows, ["client"])
  m = [r for r in table if r["method"] == "m"][0]
  assert m["forget/mean_r1_gap"][0] == pytest.approx(11.0)  # mean of 10 and 12
  assert m["forget/mean_r1_gap"][1] == pytest.approx(np.std([10, 12], ddof=1))
  assert m["mia_auc_gap"][0] == pytest.approx(0.15)
  assert m["speedup_vs_retrain"][0] == pytest.approx(10.0)
  md = benchmark.format_markdown(table, ["client"])
  assert "| m |" in md and "11.0 ± 1.4" in md and "model-effect share" not in md
  # The retrain population's model-effect share (one per request: every row of a scenario reads
  # the same population) goes in the request's heading.
  shared = [dict(r, lira_model_effect_share=0.357) for r in rows]
  assert "model-effect share 0.36:" in benchmark.format_markdown(
      benchmark.aggregate(shared, ["client"]), ["client"]).splitlines()[0]
  # Forget quality's cell: the range over seeds of p at the calibration bound, the medians of
  # (point estimate; exact) beside it; never a mean of p-values (three seeds, skewed values: a
  # mean would read otherwise).
  third = [dict(r, seed=2) for r in rows if r["seed"] == 0]
  p_rows = rows + third
  for r, (p, point, iid) in zip([r for r in p_rows if r["method"] == "m"],
                                [(0.004, 0.1, 0.01), (0.6, 0.3, 0.03), (0.05, 0.9, 0.5)]):
    r.update(forget_quality=p, forget_quality_point=point, forget_quality_iid=iid)
  p_table = benchmark.aggregate(p_rows, ["client"])
  m = [r for r in p_table if r["method"] == "m"][0]
  assert m["forget_quality_over_seeds"] == pytest.approx((0.05, 0.004, 0.6))
  assert m["forget_quality_point_over_seeds"] == pytest.approx((0.3, 0.1, 0.9))
  assert m["forget_quality_min_over_seeds"] is None and "forget_quality" not in m
  md = benchmark.format_markdown(p_table, ["client"])
  assert "forget quality: range over seeds (medians: point; iid)" in md
  assert "| 0.004–0.6 (0.3; 0.03) |" in md
  # One seed, or seeds that read the same at the cell's precision: one value.
  one_seed = benchmark.aggregate([r for r in p_rows if r["seed"] == 0], ["client"])
  assert "| 0.004 (0.1; 0.01) |" in benchmark.format_markdown(one_seed, ["client"])
  m_same = dict(m, forget_quality_over_seeds=(0.311, 0.31, 0.312))
  assert "| 0.31 (0.3; 0.03) |" in benchmark.format_markdown([m_same], ["client"])
  # The model-level test's p-value: its range over seeds in its own column, after TPR@1%FPR.
  for r, p in zip([r for r in p_rows if r["method"] == "m"], (0.2, 0.0031, 0.04)):
    r["model_level_p"] = p
  m_model = [r for r in benchmark.aggregate(p_rows, ["client"]) if r["method"] == "m"][0]
  assert m_model["model_level_p_over_seeds"] == pytest.approx((0.04, 0.0031, 0.2))
  md = benchmark.format_markdown([m_model], ["client"])
  assert "| TPR@1%FPR | model-level p: range |" in md and "| 0.0031–0.2 |" in md
  # By stratum: its own column after the pooled one, only when a row has it.
  assert "by stratum" not in md
  for r, p in zip([r for r in p_rows if r["method"] == "m"], (0.6, 0.0062, 0.08)):
    r["model_level_strata_p"] = p
  m_model = [r for r in benchmark.aggregate(p_rows, ["client"]) if r["method"] == "m"][0]
  md = benchmark.format_markdown([m_model], ["client"])
  assert ("| model-level p: range | model-level p by stratum (Bonferroni): range |" in md
          and "| 0.0031–0.2 | 0.0062–0.6 |" in md)
  # Rows from before the model-level test: no such column.
  assert "model-level p" not in benchmark.format_markdown(p_table, ["client"])
  # A p-value only some seeds have says so.
  p_rows[-1]["forget_quality"] = None
  m = [r for r in benchmark.aggregate(p_rows, ["client"]) if r["method"] == "m"][0]
  assert m["counts"]["forget_quality"] == 2
  assert "| 0.004–0.6 (0.3; 0.03) (2/3 seeds) |" in benchmark.format_markdown([m], ["client"])
  benchmark.write_csv(tmp_path / "p.csv", p_table)
  with (tmp_path / "p.csv").open() as f:
    csv_rows = list(csv.DictReader(f))
  csv_m = [r for r in csv_rows if r["method"] == "m"][0]
  assert (float(csv_m["forget_quality_median"]), float(csv_m["forget_quality_min"]),
          float(csv_m["forget_quality_max"])) == pytest.approx((0.05, 0.004, 0.6))
  assert csv_m["forget_quality_min_median"] == "" and "forget_quality_mean" not in csv_m
  # A value one seed lacks is not averaged as if all seeds had it, and one value has no spread.
  rows[3]["mia_auc"] = None
  m = [r for r in benchmark.aggregate(rows, ["client"]) if r["method"] == "m"][0]
  assert m["mia_auc"] == (0.6, 0.0) and m["counts"] == {"mia_auc": 1, "mia_auc_gap": 1}
  line = [l for l in benchmark.format_markdown([m], ["client"]).splitlines()
          if l.startswith("| m |")][0]
  assert "0.600 (1/2 seeds)" in line and "0.600 ± " not in line
  # A line cut by a kill is skipped (that cell is redone on restart).
  path = tmp_path / "results.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"scenario": "cl')
  assert len(benchmark.read_rows(path)) == len(rows)
  benchmark.write_csv(tmp_path / "b.csv", table)
  assert (tmp_path / "b.csv").read_text().startswith("scenario,method,num_seeds")


def test_benchmark_table_cells_carry_their_own_metrics():
  """Every split, direction, knowledge key and audit column has its own values, so a column
  that reads another's (the retain gap printing the forget gap, t2i under i2t) fails; each cell
  of the method's line against means, sample stds and gaps worked out here with numpy."""
  from ease_jax.unlearning import benchmark
  knowledge = ["asr/client_backdoor/i2t", "asr/client_backdoor/t2i"]
  per_seed = {  # key: ((retrain seed 0, seed 1), (method seed 0, seed 1))
      "forget/mean_r1": ((20.0, 22.0), (30.0, 34.0)),
      "retain/mean_r1": ((50.0, 51.0), (48.0, 50.0)),
      "test/mean_r1": ((40.0, 43.0), (35.0, 41.0)),
      knowledge[0]: ((1.0, 3.0), (80.0, 90.0)),
      knowledge[1]: ((0.0, 2.0), (70.0, 76.0)),
      "mia_auc": ((0.5, 0.52), (0.6, 0.7)),
      "lira_auc": ((0.5, 0.5), (0.8, 0.9)),
      "lira_tpr@0.01": ((0.01, 0.01), (0.2, 0.4)),
      "wall_time_s": ((100.0, 120.0), (10.0, 20.0)),
  }
  rows = []
  for seed in (0, 1):
    for m, method in enumerate(("retrain", "m")):
      r = {k: v[m][seed] for k, v in per_seed.items()}
      for s, offset in zip(benchmark.SPLITS, (1.0, 2.0, 3.0)):  # directions differ from the mean
        r[f"{s}/i2t_r1"], r[f"{s}/t2i_r1"] = r[f"{s}/mean_r1"] + offset, r[f"{s}/mean_r1"] - offset
      rows.append(dict(r, scenario="client", seed=seed, method=method, knowledge=knowledge))
  table = benchmark.aggregate(rows, ["client"])
  line = [l for l in benchmark.format_markdown(table, ["client"]).splitlines()
          if l.startswith("| m |")][0]
  cells = [c.strip() for c in line.split("|")[1:-1]]
  value = lambda k: np.array(per_seed[k][1])
  gap = lambda k: np.array(per_seed[k][1]) - np.array(per_seed[k][0])
  pm = lambda v, d=1: f"{np.mean(v):.{d}f} ± {np.std(v, ddof=1):.{d}f}"
  speedup = np.array(per_seed["wall_time_s"][0]) / np.array(per_seed["wall_time_s"][1])
  assert cells == [
      "m", pm(value(knowledge[0])), pm(value(knowledge[1])),
      f"{pm(gap(knowledge[0]))} / {pm(gap(knowledge[1]))}",
      f"{pm(value('forget/mean_r1'))} ({pm(gap('forget/mean_r1'))})",
      pm(gap("retain/mean_r1")), pm(gap("test/mean_r1")), "—",
      pm(value("lira_auc"), 3), pm(value("lira_tpr@0.01"), 3),
      f"{pm(value('mia_auc'), 3)} ({np.mean(gap('mia_auc')):+.3f})",
      pm(value("wall_time_s"), 2), f"{np.mean(speedup):.1f}×"]
  m = [r for r in table if r["method"] == "m"][0]
  for s, offset in zip(benchmark.SPLITS, (1.0, 2.0, 3.0)):
    assert m[f"{s}/i2t_r1"][0] == pytest.approx(np.mean(value(f"{s}/mean_r1")) + offset)
    assert m[f"{s}/t2i_r1"][0] == pytest.approx(np.mean(value(f"{s}/mean_r1")) - offset)
    assert m[f"{s}/mean_r1_gap"] == pytest.approx((np.mean(gap(f"{s}/mean_r1")),
                                                   np.std(gap(f"{s}/mean_r1"), ddof=1)))


def test_ease_diagnostics_summarise_the_gsd_ranks():
  from ease_jax.unlearning import benchmark
  rows = [dict(scenario="client", seed=s, method="ease",
               diagnostics=dict(forget_rank=[3, 3], unique_rank=u, bke_delta_norm=n,
                                gsd_time_s=1.0, bke_projection_time_s=2.0))
          for s, (u, n) in enumerate([([2, 0], 0.5), ([1, 1], 0.7)])]
  rows.append(dict(scenario="client", seed=0, method="retrain", diagnostics={}))
  md = benchmark.ease_diagnostics(rows, ["client", "sample"])
  lines = md.splitlines()
  assert len(lines) == 3  # Header, separator, the one scenario with EASE rows.
  cells = [c.strip() for c in lines[2].split("|")[1:-1]]
  # scenario, seeds, forget Σ, unique Σ (2 and 2), modules moved (1 and 2), norm, GSD, BKE, modules
  assert cells == ["client", "2", "6.0 ± 0.0", "2.0 ± 0.0", "1.5 ± 0.7", "0.60 ± 0.14",
                   "1.00 ± 0.00", "2.00 ± 0.00", "2"]
  assert benchmark.ease_diagnostics(rows[-1:], ["client"]) == ""


def test_benchmark_variants_run_a_method_under_other_knobs(monkeypatch):
  import ml_collections
  from ease_jax.unlearning import base
  from ease_jax.unlearning import benchmark
  from ease_jax.unlearning import methods
  seen = []
  monkeypatch.setitem(methods.METHODS, "probe",
                      lambda ctx: seen.append(ctx.config.gsd.to_dict()) or "done")
  config = ml_collections.ConfigDict(dict(
      gsd=dict(retain_energy=0.99, angle_threshold_deg=45.0),
      benchmark=dict(methods=("probe", "probe_low"), variants=dict(probe_low=dict(
          method="probe", overrides=dict(gsd=dict(retain_energy=0.5,
                                                  angle_threshold_deg=30.0)))))))
  fns = benchmark.resolve_methods(config)
  ctx = base.UnlearningContext(setup=None, config=config, request=None, trained=None,
                               history=None, eval_subsets={})
  assert fns["probe"](ctx) == fns["probe_low"](ctx) == "done"
  assert seen == [dict(retain_energy=0.99, angle_threshold_deg=45.0),
                  dict(retain_energy=0.5, angle_threshold_deg=30.0)]
  assert config.gsd.retain_energy == 0.99  # The variant changed a copy.
  b = config.benchmark
  b.variants.probe_low.overrides.gsd.retain_enrgy = 0.1
  with pytest.raises(KeyError, match="gsd.retain_enrgy"):
    benchmark.resolve_methods(config)
  del b.variants.probe_low.overrides.gsd["retain_enrgy"]
  b.methods = ("probe_typo",)
  with pytest.raises(ValueError, match="probe_typo"):
    benchmark.resolve_methods(config)
  b.methods = ("probe_low",)
  b.variants.probe_low.mthod = "x"
  with pytest.raises(ValueError, match="mthod"):
    benchmark.resolve_methods(config)


def test_shipped_benchmark_config_builds_every_request():
  """Every scenario × seed of `benchmark_emoji.py` is a valid request on the embedded data."""
  import pathlib
  from ease_jax import configs
  from ease_jax import builders
  from ease_jax.unlearning import benchmark
  from ease_jax.unlearning import requests
  config = configs.from_file(pathlib.Path(__file__).resolve().parent.parent / "experiments"
                             / "configs" / "benchmark_emoji.py")
  setup = builders.build_setup(config)
  kinds = set()
  for scenario in config.benchmark.scenarios:
    for seed in config.benchmark.seeds:
      cfg = benchmark.scenario_config(config, scenario, seed)
      req = requests.from_config(setup, cfg.unlearning, seed=cfg.seeds.unlearning)
      assert len(req.forget_texts) > 0
      kinds.add(req.kind)
  assert kinds == {"client", "sample", "concept"}


def test_matched_cosines_pairs_each_text_with_the_given_image(tiny_setup):
  """Without `images`, caption i meets its own image; with them, image i (a pair the dataset
  need not hold), against cosines computed here from `embed`'s rows."""
  setup = tiny_setup
  trainable = builders.init_trainable(setup, tiny_config())
  texts = np.arange(0, len(setup.dataset.text_image), 3)[:12]
  images = np.random.default_rng(1).permutation(setup.dataset.num_images)[:len(texts)]
  image_emb, text_emb = device_lib.embed(setup.model, setup.backbone, trainable, setup.data,
                                         images, texts)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  want = np.sum(unit(image_emb) * unit(text_emb), axis=1)
  got = federated.matched_cosines(setup.model, setup.backbone, trainable, setup.data, texts,
                                  images=images)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  own = np.asarray(setup.dataset.text_image)[texts]
  np.testing.assert_array_equal(
      federated.matched_cosines(setup.model, setup.backbone, trainable, setup.data, texts),
      federated.matched_cosines(setup.model, setup.backbone, trainable, setup.data, texts,
                                images=own))
  with pytest.raises(ValueError, match="pairs text i with image i"):
    federated.matched_cosines(setup.model, setup.backbone, trainable, setup.data, texts,
                              images=images[:-1])
