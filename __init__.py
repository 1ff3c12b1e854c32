"""eoforge: Sentinel-1/2 foundation-model datasets and pretraining.

The pipeline stages are sub-packages, in the order data flows through them::

    eoforge.ingest  raw GeoTIFFs -> planned tiles -> shards
    eoforge.shards  the on-disk contract: schema, writer, reader, manifest, verify
    eoforge.train   streaming SSL pretraining on shards
    eoforge.eval    frozen-backbone probes
"""

__version__ = "0.2.0"
