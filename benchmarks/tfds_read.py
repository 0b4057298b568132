"""Times reading a prepared TFDS array_record split one example at a time.

Prepares a stub `cifar10` split of random 32x32x3 images in a temporary
data_dir (a PIL PNG encoder replaces TensorFlow's), then compares
`tfds_source.read`'s per-index loop with one `__getitems__` call.

  PYTHONPATH=. python3 benchmarks/tfds_read.py --num_examples=5000
"""

import io
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from mcjax.data import tfds_source

_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 5000,
                                     "Training examples to prepare and read.")


def _encode_png(self, image):
  del self
  buffer = io.BytesIO()
  PIL.Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
  return buffer.getvalue()


def _prepare(data_dir, num_examples):
  tfds.features.Image.encode_example = _encode_png

  with tfds.core.registered.skip_registration():

    class Cifar10(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version("3.0.2")

      def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(32, 32, 3)),
                "label": tfds.features.ClassLabel(num_classes=10)}))

      def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(num_examples),
                "test": self._generate_examples(10)}

      def _generate_examples(self, count):
        rng = np.random.default_rng(0)
        for i in range(count):
          yield i, {"image": rng.integers(0, 256, (32, 32, 3), np.uint8),
                    "label": i % 10}

  Cifar10(data_dir=data_dir).download_and_prepare(file_format="array_record")


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as data_dir:
    _prepare(data_dir, _NUM_EXAMPLES.value)
    source = tfds.data_source("cifar10", split="train", data_dir=data_dir,
                              download=False)

    start = time.perf_counter()
    tfds_source.read("cifar10", data_dir)
    per_index = time.perf_counter() - start

    start = time.perf_counter()
    examples = source.__getitems__(list(range(len(source))))
    np.stack([example["image"] for example in examples])
    batched = time.perf_counter() - start

  n = _NUM_EXAMPLES.value
  print(f"examples: {n} train + 10 test")
  print(f"tfds_source.read (per index, both splits): {per_index:.2f} s, "
        f"{1e6 * per_index / n:.0f} us/example")
  print(f"__getitems__ (train only): {batched:.2f} s, "
        f"{1e6 * batched / n:.0f} us/example")
  print(f"ratio per-index / getitems: {per_index / batched:.2f}")


if __name__ == "__main__":
  app.run(main)
