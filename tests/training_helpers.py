"""Small real datasets and training configs shared by the training tests."""

import ml_collections

from mcjax import data
from mcjax.data import fashion_mnist


def fashion_mnist_subset(num_train: int, num_test: int) -> data.Dataset:
  """Returns the first images of the real Fashion-MNIST splits."""
  full = fashion_mnist.load_idx()
  return data.Dataset(name=full.name, train=full.train.take(num_train),
                      test=full.test.take(num_test),
                      num_classes=full.num_classes, mean=full.mean,
                      std=full.std)


def train_config(**values) -> ml_collections.ConfigDict:
  """Returns an endpoint training config for tiny runs; `values` override it.

  Augmentation is off, because without it the network learns within a few
  epochs on a few hundred images.
  """
  defaults = dict(epochs=1, batch_size=16, learning_rate=0.05, momentum=0.9,
                  weight_decay=5e-4, augment=False, checkpoint_every=1,
                  keep_checkpoints=10, eval_batch_size=200,
                  log_every_steps=1000)
  return ml_collections.ConfigDict({**defaults, **values})
