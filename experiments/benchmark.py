r"""The unlearning comparison table: every method × scenario × seed against retrain.

  python experiments/benchmark.py --config=experiments/configs/benchmark_emoji.py \
      --workdir=workdirs/benchmark_emoji [--config.benchmark.seeds="(0,1,2)"]

Resumable: rerun the same command after an interruption. Writes `results.jsonl` (one row per
finished cell), `benchmark.md`, `benchmark.csv` and `benchmark.png` to the workdir and prints the
markdown table. `--report_only` only re-aggregates the finished cells; `--benchmarks_md` also
writes the table, command and machine as the generated text of the BENCHMARKS.md section named
by `--section` ("Unlearning comparison" by default); notes written by hand around it are kept
(`benchmarks/common.write_section`).
"""
import pathlib
import sys

# Before JAX starts: see ease_jax/runtime.py (an XLA:CPU hang; populations on every core).
from ease_jax import runtime  # pylint: disable=g-bad-import-order

runtime.avoid_cpu_hang()
runtime.one_cpu_device_per_core()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from ml_collections import config_flags

from ease_jax import cli
from ease_jax import validation

from ease_jax.unlearning import benchmark

_CONFIG = config_flags.DEFINE_config_file("config", None, "Benchmark config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for runs, results, table and plot.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Aggregate finished cells, run nothing.")
_BENCHMARKS_MD = flags.DEFINE_bool("benchmarks_md", False,
                                   "Write the table, command and machine to BENCHMARKS.md.")
_SECTION = flags.DEFINE_string("section", "Unlearning comparison",
                               "The BENCHMARKS.md section whose generated text --benchmarks_md "
                               "rewrites.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cli.quiet_library_logs()
  config, workdir = _CONFIG.value, pathlib.Path(_WORKDIR.value)
  validation.require_blocks(config, ("benchmark", "unlearning"), "the benchmark",
                            "experiments/configs/benchmark_emoji.py")
  scenarios = list(config.benchmark.scenarios)
  if _REPORT_ONLY.value:
    table = benchmark.report(config, workdir)["table"]
  else:
    cli.cache_compilations(workdir)
    table = benchmark.run_benchmark(config, workdir)["table"]
  md = benchmark.format_markdown(table, scenarios)
  print(md)
  if _BENCHMARKS_MD.value:
    root = pathlib.Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "benchmarks"))
    import common  # pylint: disable=g-import-not-at-top
    # The command that computes the table (not the reporting flags of this invocation).
    command = " ".join(a for a in common.command().split()
                       if not a.startswith(("--report_only", "--benchmarks_md", "--section")))
    body = benchmark.section_text(table, config, workdir, common.machine(), command)
    common.write_section(_SECTION.value, body)


if __name__ == "__main__":
  cli.run(main)
