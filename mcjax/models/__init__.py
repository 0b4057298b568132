"""Flax (linen) models."""

from mcjax.models.layers import Conv3x3
from mcjax.models.layers import conv3x3_patches
from mcjax.models.vgg import VGG
from mcjax.models.vgg import VGG16
from mcjax.models.vgg import VGG16_BLOCKS
from mcjax.models.vgg import VGG19
from mcjax.models.vgg import VGG19_BLOCKS
from mcjax.models.vgg import layer_names
