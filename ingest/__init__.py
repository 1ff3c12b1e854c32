"""Raw Sentinel-1/2 GeoTIFFs + land cover -> planned grid tiles -> shards (Dask)."""
