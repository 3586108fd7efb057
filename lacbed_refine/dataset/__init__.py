"""Training data: (projected potential, LACBED pattern) pairs of real and synthetic cubic crystals.

The default geometry is the paper's (and the shipped surrogates'): [001], x along [100], 128×128.
:class:`BuildSpec` ``zone`` / ``x_direction`` / ``normal`` build the pairs of another zone axis
(the potential projected along it), recorded in the file's settings (:func:`zone_of`), for
surrogates trained on them later; the shipped [001] surrogates refuse such files.

- :func:`build_dataset` simulates CIF folders and/or synthetic structures into one HDF5 file
  (resumable, parallel over processes or a Dask cluster, deterministic content hash);
- :func:`import_png` reads the ai-diffraction PNG layout into the same layout;
- :class:`LacbedDataset` serves the file to PyTorch (lazy, DataLoader-worker safe);
- :func:`subset_dataset` writes a few structures of a split as a small file of the same layout;
- :func:`read_info` and :func:`dataset_hash` summarise and verify a file; :func:`work_status`
  reports the progress of an unfinished build;
- :func:`open_dataset_file` is the one way a file is opened: a missing, non-HDF5, truncated or
  damaged file raises :class:`DatasetFileError` (a ``ValueError``) naming it.

The HDF5 layout is documented in :mod:`lacbed_refine.dataset._layout` and the README.
"""

from lacbed_refine.dataset._build import BuildResult, build_dataset
from lacbed_refine.dataset._layout import FORMAT, FORMAT_VERSION, META_FIELDS, DatasetFileError, MissingDatasetError, dataset_hash, open_dataset_file, read_info, zone_of
from lacbed_refine.dataset._png import import_png
from lacbed_refine.dataset._subset import subset_dataset
from lacbed_refine.dataset._tasks import DATASET_BEAMS, BuildSpec
from lacbed_refine.dataset._torch import LacbedDataset
from lacbed_refine.dataset._workdir import work_status

__all__ = [
    "build_dataset",
    "BuildResult",
    "BuildSpec",
    "DATASET_BEAMS",
    "import_png",
    "subset_dataset",
    "LacbedDataset",
    "read_info",
    "zone_of",
    "work_status",
    "dataset_hash",
    "open_dataset_file",
    "DatasetFileError",
    "MissingDatasetError",
    "FORMAT",
    "FORMAT_VERSION",
    "META_FIELDS",
]
