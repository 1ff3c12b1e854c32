"""Streaming self-supervised pretraining on shards (PerA, SoftCon, CMID, S1/S2 dual encoder); issue #4."""
