"""Synthetic but provider-faithful raw Sentinel inputs for demos and tests.

``eoforge demo-data OUT`` calls :func:`generate_demo_data`, which writes Sentinel-2 L2A/L1C
products (SAFE and Earth Search packaging), Sentinel-1 GRD exports (dB and linear), ESA
WorldCover tiles, and ``truth.json`` describing them. Modules, one job each:

* :mod:`~eoforge.ingest.demo.landscape` — the synthetic world as functions of lon/lat;
* :mod:`~eoforge.ingest.demo.catalog` — which products exist, their names and roles;
* :mod:`~eoforge.ingest.demo.products` — rendering and writing the files.
"""

from eoforge.ingest.demo.catalog import Catalog, MgrsTile, S1Product, S2Product, default_catalog
from eoforge.ingest.demo.landscape import DEMO_CLASSES, DemoArea, Landscape, Sky
from eoforge.ingest.demo.products import DemoResult, generate_demo_data

__all__ = [
    "DEMO_CLASSES",
    "Catalog",
    "DemoArea",
    "DemoResult",
    "Landscape",
    "MgrsTile",
    "S1Product",
    "S2Product",
    "Sky",
    "default_catalog",
    "generate_demo_data",
]
