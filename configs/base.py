"""Research defaults: VGG16 on CIFAR-10, one neuron pair swapped in the middle.

  python -m experiments.run --config configs/base.py --workdir runs/base

The values reproduce the setting of Garipov et al. 2018 (dnn-mode-connectivity):
SGD with momentum 0.9, 200 epochs of batch 128 for the endpoints and for the
curve, a 3-bend Bezier curve, and 61 evaluation points. Other configs start
from this one and change a few fields. Override any field on the command line,
for example `--config.curve.epochs=30`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the research-default config."""
  config = ml_collections.ConfigDict()
  # Name of the experiment in report.md and in Weights & Biases.
  config.name = "base"

  config.dataset = ml_collections.ConfigDict()
  # "cifar10" or "fashion_mnist".
  config.dataset.name = "cifar10"
  # Where mcjax.data.load reads the dataset from; "auto" tries each source
  # that needs no download, in the library's order.
  config.dataset.source = "auto"
  # Folder that contains the dataset files. With "" mcjax.data.load searches
  # $MCJAX_DATA_DIR, ./data, ~/data and, for Fashion-MNIST,
  # /usr/share/datasets/fashion-mnist. It is left out of every stage
  # fingerprint, because moving the data does not change the results.
  config.dataset.data_dir = ""
  # Allow a download when the dataset is missing locally. Off, so no run
  # touches the network unless asked.
  config.dataset.download = False
  # Use only the first N training images (0 = all of them).
  config.dataset.train_size = 0
  # Use only the first N test images (0 = all of them). The permutation's
  # equivalence check runs on this test split.
  config.dataset.test_size = 0

  config.model = ml_collections.ConfigDict()
  # "vgg16" or "vgg19" (the dnn-mode-connectivity VGG).
  config.model.name = "vgg16"
  # Channel multiplier for every conv and hidden dense layer (1.0 = 64..512
  # channels, 0.125 = 8..64).
  config.model.width = 1.0
  # Batch norm after every convolution (VGG16BN).
  config.model.batch_norm = False
  # Dropout rate before fc1 and fc2 in training, as in dnn-mode-connectivity.
  config.model.dropout_rate = 0.5

  # Training of the start endpoint, theta_0. The second endpoint of
  # seed0_seed1-style configs (endpoint_b) uses these hyperparameters too.
  config.endpoint = ml_collections.ConfigDict()
  # Seed of the initialisation, data order, augmentation and dropout.
  config.endpoint.seed = 0
  # Load this endpoint instead of training it: a dnn-mode-connectivity
  # PyTorch `.pt` checkpoint ("" = train).
  config.endpoint.checkpoint = ""
  # Folder of an endpoint stage shared by several experiments, such as the
  # seed-0 endpoint of the three depths ("" = WORKDIR/endpoint). A shared
  # folder whose endpoint came from other dataset, model or endpoint fields is
  # an error, and is never removed or overwritten.
  config.endpoint.shared_dir = ""
  # Training epochs (full passes over the training split).
  config.endpoint.epochs = 200
  # Examples per SGD step.
  config.endpoint.batch_size = 128
  # Peak learning rate; the schedule keeps it until 50% of the epochs, then
  # decays it linearly to 1% of it at 90%.
  config.endpoint.learning_rate = 0.05
  # SGD momentum.
  config.endpoint.momentum = 0.9
  # Coupled weight decay, added to the gradient as in PyTorch's SGD.
  config.endpoint.weight_decay = 5e-4
  # Random crop with 4-pixel zero padding and a random horizontal flip.
  config.endpoint.augment = True
  # Save a checkpoint every N epochs (and always after the last one).
  config.endpoint.checkpoint_every = 10
  # Number of newest checkpoints kept on disk.
  config.endpoint.keep_checkpoints = 2
  # Examples per batch when evaluating on the test split after each epoch.
  config.endpoint.eval_batch_size = 1000
  # Log the running training loss every N steps.
  config.endpoint.log_every_steps = 100

  # The second, independently trained endpoint (seed0_seed1-style configs).
  config.endpoint_b = ml_collections.ConfigDict()
  # Train (or load) a second endpoint and join the two by the curve. When
  # False the end of the curve is the permuted start endpoint.
  config.endpoint_b.enabled = False
  # Seed of the second endpoint's training.
  config.endpoint_b.seed = 1
  # Load the second endpoint from a `.pt` checkpoint ("" = train).
  config.endpoint_b.checkpoint = ""
  # Shared folder of the second endpoint's stage, as endpoint.shared_dir
  # ("" = WORKDIR/endpoint_b).
  config.endpoint_b.shared_dir = ""

  # The permutation that makes the end of the curve.
  config.permute = ml_collections.ConfigDict()
  # One of:
  #   "swap": exchange num_pairs disjoint pairs of units of one layer.
  #   "mirror": reverse the order of the units of every hidden layer.
  #   "weight_matching": align endpoint_b to the start endpoint (Ainsworth et
  #     al. 2023). Needs endpoint_b.enabled.
  #   "none": join the two endpoints as they are. Needs endpoint_b.enabled.
  config.permute.mode = "swap"
  # Layer whose units are swapped: a depth preset ("early" = block0_conv0,
  # "mid" = block2_conv1, "late" = block4_conv1 on VGG16) or any conv or
  # hidden dense layer name (block{b}_conv{l}, fc1, fc2).
  config.permute.layer = "mid"
  # Disjoint pairs of units to swap, 1 <= num_pairs <= units // 2. One pair
  # swaps 2 neurons.
  config.permute.num_pairs = 1
  # Explicit pairs such as "3:17" or "3:17,5:9" (replaces num_pairs and
  # seed); "" draws num_pairs pairs from seed.
  config.permute.pairs = ""
  # Seed that draws the pairs (swap) or initialises weight matching.
  config.permute.seed = 0
  # Largest absolute logit difference on the test split at which the
  # permuted network still counts as equivalent (float32 sums in another
  # order differ in the last bits). A larger difference stops the run.
  config.permute.tolerance = 1e-3
  # Examples per batch of the equivalence check.
  config.permute.batch_size = 1000

  # Training of the curve between the two endpoints.
  config.curve = ml_collections.ConfigDict()
  # Seed of the data order, the draws of t, augmentation and dropout.
  config.curve.seed = 0
  # Load the curve from a dnn-mode-connectivity `.pt` curve checkpoint
  # ("" = train).
  config.curve.checkpoint = ""
  # "bezier" or "polychain".
  config.curve.kind = "bezier"
  # Control points including both endpoints (>= 3; the endpoints stay fixed).
  config.curve.num_bends = 3
  # "reg": 0.5 * weight_decay * ||theta(t)||^2 on the sampled point;
  # "noreg": no weight decay.
  config.curve.regularization = "reg"
  # Values of t ~ U(0, 1) drawn per batch; their losses are averaged.
  config.curve.t_per_batch = 1
  # Training epochs.
  config.curve.epochs = 200
  # Examples per SGD step.
  config.curve.batch_size = 128
  # Peak learning rate, with the same schedule as the endpoints.
  config.curve.learning_rate = 0.015
  # SGD momentum.
  config.curve.momentum = 0.9
  # Weight decay of the "reg" regulariser.
  config.curve.weight_decay = 5e-4
  # Random crop and horizontal flip, as for the endpoints.
  config.curve.augment = True
  # Save a checkpoint every N epochs (and always after the last one).
  config.curve.checkpoint_every = 10
  # Number of newest checkpoints kept on disk.
  config.curve.keep_checkpoints = 2
  # Examples per batch when evaluating the curve's midpoint after each epoch.
  config.curve.eval_batch_size = 1000
  # Log the running training loss every N steps.
  config.curve.log_every_steps = 100

  # Loss and error along the curve and along the straight line.
  config.evaluate = ml_collections.ConfigDict()
  # Evenly spaced values of t in [0, 1], both ends included.
  config.evaluate.num_points = 61
  # Training images used for the train loss and error along the paths
  # (0 = the whole training split).
  config.evaluate.train_size = 0
  # Test images used for the test loss and error along the paths (0 = the
  # whole test split).
  config.evaluate.test_size = 0
  # Examples per evaluation batch. Not part of any fingerprint.
  config.evaluate.batch_size = 1000

  # Per-layer distances along the curve and the locality summary.
  config.analyse = ml_collections.ConfigDict()
  # Evenly spaced values of t in [0, 1], both ends included.
  config.analyse.num_points = 61
  # Number of layers listed in the locality summary, largest deviation first.
  config.analyse.top_layers = 5

  # Pictures of the analysis.
  config.plots = ml_collections.ConfigDict()
  # Per-layer metric drawn in the GIF, a name from mcjax.analysis.METRICS:
  # "deviation" is ||theta(t) - line(t)||, the correction the curve makes to
  # the straight line. The permutation metrics ("to_permuted_start",
  # "reordered*") need permute.mode "swap" or "mirror".
  config.plots.gif_metric = "deviation"
  # Per-layer metric drawn in the heatmap, as gif_metric.
  config.plots.heatmap_metric = "deviation"
  # Frames per second of the GIF.
  config.plots.fps = 10

  # Optional Weights & Biases logging of the per-epoch metrics.
  config.wandb = ml_collections.ConfigDict()
  # Send metrics to Weights & Biases too (needs `pip install wandb`).
  config.wandb.enabled = False
  # "offline" writes runs under WORKDIR/wandb for a later `wandb sync` and
  # needs no network; "online" uploads as it goes.
  config.wandb.mode = "offline"
  # Project name.
  config.wandb.project = "mcjax"
  # Team or user name ("" = the default entity of the logged-in user).
  config.wandb.entity = ""
  return config
