"""Runs the example of docs/permutations.md as written."""

import pathlib
import re

_DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "permutations.md"


def _python_blocks():
  return re.findall(r"```python\n(.*?)```", _DOC.read_text(), flags=re.DOTALL)


def test_doc_has_one_example():
  assert len(_python_blocks()) == 1


def test_doc_example_runs(capsys):
  namespace = {"__name__": "docs_permutations_example"}
  exec(compile(_python_blocks()[0], str(_DOC), "exec"), namespace)  # pylint: disable=exec-used
  printed = capsys.readouterr().out.splitlines()
  assert printed[0] == "('conv0', 'conv1', 'hidden')"
  assert printed[1] == "('conv1', 'hidden')"
  assert printed[2] == "16"
  assert namespace["metrics"]["agreement"] == 1.0
  assert namespace["metrics"]["num_examples"] == 32
