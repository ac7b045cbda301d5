"""Experiments layer: resumable runs and the runners built on one scaffold.

    runs.py        PoolerSpec (pooler + the states it reads: layer= / mix= / tokens=), RunRecord, run_one
    scaffold.py    prepare_experiment: splits -> unique texts -> cache -> cached splits
    compare.py  stress.py  sweep.py  efficiency.py   the runners;  pipeline.py  the main job;  report.py  figures
    layers.py      the per-layer probe curve (glotpool layers);  decoder_suite.py  compare --suite decoder
"""
