"""Reference datasets -> labelled eoforge shards (EuroSAT-MS, BigEarthNet, Sen1Floods11).

Each adapter reads the dataset's own files and writes an ordinary dataset folder through
:mod:`eoforge.shards` (shards, manifest, stats), so probes, the trainer and
``eoforge shards verify`` treat it like an ingested dataset.
"""

from __future__ import annotations

ADAPTERS = ("eurosat", "bigearthnet", "sen1floods11")
