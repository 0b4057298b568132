"""Datasets as device-resident arrays, and their transforms."""

from mcjax.data.core import Dataset
from mcjax.data.core import Split
from mcjax.data.core import to_split
from mcjax.data.loading import DatasetNotFoundError
from mcjax.data.loading import load
from mcjax.data.loading import search_dirs
from mcjax.data.transforms import augment
from mcjax.data.transforms import normalize
