"""Experiments layer: resumable runs and the runners built on one scaffold.

    runs.py        PoolerSpec, RunRecord, run_one (one pooler, one seed, resumable)
    scaffold.py    prepare_experiment: splits -> unique texts -> cache -> cached splits
    compare.py  stress.py  sweep.py  efficiency.py   the runners;  pipeline.py  the main job;  report.py  figures
"""
