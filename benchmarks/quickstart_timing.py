"""Times the whole quickstart pipeline and prints a markdown summary.

  PYTHONPATH=. python3 benchmarks/quickstart_timing.py [--workdir DIR]
      [-- extra experiments.run flags]

Runs `python -m experiments.run --config configs/quickstart.py` in a fresh
workdir as a subprocess. It reports the wall time and the CPU time (user +
system), which a busy machine inflates less than the wall time. It also
reports the seconds of each stage from its stage.json, the endpoint's test
accuracy, the equivalence check and both barriers. The load average before
and after shows how busy the machine was.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

STAGES = ("endpoint", "permute", "curve", "evaluate", "analyse", "plots",
          "report")


def read(workdir, *parts):
  with open(os.path.join(workdir, *parts)) as f:
    return json.load(f)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=None,
                      help="fresh folder for the run (default: a temp dir)")
  parser.add_argument("extra", nargs="*",
                      help="extra experiments.run flags, after --")
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="quickstart-")

  load_before = os.getloadavg()
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "experiments.run", "--config",
                  "configs/quickstart.py", "--workdir", workdir, *args.extra],
                 check=True)
  wall = time.perf_counter() - start
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  load_after = os.getloadavg()

  endpoint = read(workdir, "endpoint", "summary.json")
  check = read(workdir, "permute", "permutation.json")["check"]
  barriers = {name: read(workdir, "evaluate", f"{name}.json")["barriers"]
              for name in ("curve", "line")}
  print(f"workdir: {workdir}")
  print(f"machine: {os.cpu_count()} CPUs; load average (1, 5, 15 min) "
        f"before {load_before}, after {load_after}")
  print()
  print("| measure | value |")
  print("|---|---|")
  print(f"| wall time | {wall:.0f} s |")
  print(f"| CPU time (user + system) | {usage.ru_utime + usage.ru_stime:.0f} s |")
  for stage in STAGES:
    marker = read(workdir, stage, "stage.json")
    print(f"| stage {stage}: wall / CPU | {marker['seconds']:.0f} s / "
          f"{marker['cpu_seconds']:.0f} s |")
  print(f"| endpoint test accuracy | {endpoint['test']['accuracy']:.2f}% |")
  print(f"| equivalence: max logit difference | "
        f"{check['max_logit_difference']:.3g} |")
  print(f"| equivalence: prediction agreement | "
        f"{check['prediction_agreement']:.4f} |")
  for name in ("curve", "line"):
    print(f"| {name} barrier: test error / train loss | "
          f"{barriers[name]['test_error']:.3g} / "
          f"{barriers[name]['train_loss']:.3g} |")


if __name__ == "__main__":
  main()
