"""The files other tools read, in a room of their own below their writers and readers.

- :mod:`.coords_h5`: patch coordinates, one HDF5 file per slide (CLAM's or TRIDENT's convention).
- :mod:`.manifest`: the tiler's ``manifest.csv``.
- :mod:`.feature_bags`: feature bags, one HDF5 file per slide, and their ``index.csv``.
"""
