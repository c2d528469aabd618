"""Medical-volume data: I/O, discovery, preprocessing, the cache, datasets and the phantom.

Submodules import their heavy libraries (SimpleITK, nibabel, itk, MONAI) inside the functions that
need them, so importing this package needs only numpy (and torch for the datasets).

- :mod:`medvol.data.io`: :class:`Volume`, :func:`read_volume`, :func:`write_volume`.
- :mod:`medvol.data.discover`: :func:`discover` (file, folder, glob, .txt list; LUNA16, LiTS).
- :mod:`medvol.data.preprocess`: :class:`PreprocessParams`, :func:`preprocess_volume`,
  :func:`to_intensity`.
- :mod:`medvol.data.cache`: :func:`build_cache`, :func:`load_manifest`.
- :mod:`medvol.data.datasets`: :class:`PhantomVolumeDataset`, :class:`CachedVolumeDataset`,
  :class:`SliceDataset`.
- :mod:`medvol.data.phantom`: :func:`make_phantom`, :func:`write_phantoms`.
- :mod:`medvol.data.adapters`: a cache as a MONAI ``Dataset`` or TorchIO ``SubjectsDataset``.
"""

from medvol.data.discover import discover
from medvol.data.io import Volume, read_volume, write_volume
from medvol.data.phantom import make_phantom
from medvol.data.preprocess import PreprocessParams, preprocess_volume, to_intensity

__all__ = ["Volume", "read_volume", "write_volume", "discover", "make_phantom", "PreprocessParams",
           "preprocess_volume", "to_intensity"]
