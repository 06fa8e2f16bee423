"""Registration of longitudinal scans with SimpleITK (optional extra: ``pip install 'longiseg[register]'``).

* :mod:`longiseg.registration.grid`: voxel grids, nibabel <-> SimpleITK conversion;
* :mod:`longiseg.registration.pairwise`: rigid/affine mutual-information registration of one pair,
  resampling, similarity and motion measures, N4;
* :mod:`longiseg.registration.cohort`: ``longiseg register RAW OUT``, raw scans into the library layout
  with transforms and quality checks;
* :mod:`longiseg.registration.native`: baseline-space masks (predictions) back onto a follow-up's
  original grid.

SimpleITK is imported only when a function needs it; without it those functions raise an ``ImportError``
that names the extra.
"""
