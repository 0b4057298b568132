"""report.md: what the experiment found and where its artifacts are."""

from __future__ import annotations

import os

from experiments import storage


def artifacts(workdir: str) -> list[str]:
  """Lists the files under `workdir`, relative to it, without checkpoints."""
  found = []
  for root, dirs, files in os.walk(workdir):
    dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", "wandb"))
    for name in sorted(files):
      if name.startswith(".tmp-"):
        continue
      found.append(os.path.relpath(os.path.join(root, name), workdir))
  return found


def write(ctx) -> None:
  """Writes WORKDIR/report.md from the outputs of the earlier stages."""
  lines = [f"# {ctx.config.name}", ""]
  lines += ["## Artifacts", ""]
  lines += [f"- [{path}]({path})" for path in artifacts(ctx.workdir)]
  storage.write_text(os.path.join(ctx.workdir, "report.md"),
                     "\n".join(lines) + "\n")
