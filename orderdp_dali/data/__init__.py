"""The data layer: one :class:`~orderdp_dali.data.source.DataSource` protocol, one module per format.

* :mod:`~orderdp_dali.data.source`: the protocol the plan iterator reads every format through.
* :mod:`~orderdp_dali.data.folder` (class folders, :class:`SampleIndex`), with its walk
  (:mod:`~orderdp_dali.data.walk`); :mod:`~orderdp_dali.data.file_lists` (a file list, or a
  flat validation folder with Kaggle's labels CSV, indexed into a ``SampleIndex``);
  :mod:`~orderdp_dali.data.tar` (tar shards, :class:`TarIndex`, over the format rules of
  :mod:`~orderdp_dali.data.tar_format`); :mod:`~orderdp_dali.data.cifar` (CIFAR arrays).
* Shared by them: :mod:`~orderdp_dali.data.cache` (the stamped index cache),
  :mod:`~orderdp_dali.data.images` (the image check, a leaf module),
  :mod:`~orderdp_dali.data.exclusions` (check-data's list of bad files, read back) and
  :mod:`~orderdp_dali.data.fingerprints`.

The writers (:mod:`orderdp_dali.make_data`, :mod:`orderdp_dali.make_shards`) and the checker
(:mod:`orderdp_dali.check_data`) sit on top of this package; nothing here imports them.
"""
from orderdp_dali.data.cifar import ArrayDataset, load_cifar
from orderdp_dali.data.exclusions import load_exclusion_list
from orderdp_dali.data.file_lists import index_split
from orderdp_dali.data.folder import SampleIndex
from orderdp_dali.data.source import DataSource, Samples
from orderdp_dali.data.tar import TarIndex

__all__ = ["ArrayDataset", "DataSource", "Samples", "SampleIndex", "TarIndex", "index_split", "load_cifar",
           "load_exclusion_list"]
