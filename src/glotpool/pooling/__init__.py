"""Pooling layer: token states ``[B, L, D]`` + mask -> one vector per sentence. Knows nothing of caches or tasks.

    base.py       Pooler, PoolerConfig, check_inputs, the registry (build_pooler / load_pooler)
    layer_mix.py  ScalarMix: the learned mix of K hidden layers behind every pooler's layer_mix=K option
    baselines.py  mean, max, cls, last, weighted_mean
    attention.py  adapool, pma, latent_attention, mlp_attention (graph-free)
    glot.py       GLOT: graph -> GNN -> readout
    graph.py      token-similarity graphs;  gnn.py  dense token GNN;  readout.py  attention readout
    sparse.py     the same GLOT function on sparse edge lists (long documents);  layers.py  DenseGATv2Conv

Importing this package imports every pooler module, so the registry is complete.
"""
from glotpool.pooling.base import (POOLERS, Pooler, PoolerConfig, available_poolers, build_pooler, check_inputs,
                                   count_parameters, load_pooler, register_pooler)
from glotpool.pooling.baselines import CLSPooling, LastTokenPooling, MaxPooling, MeanPooling, WeightedMeanPooling
from glotpool.pooling.attention import AdaPool, LatentAttentionPooling, MLPAttentionPooling, PMAPooling
from glotpool.pooling.glot import GLOTConfig, GLOTPooling
from glotpool.pooling.layer_mix import ScalarMix

__all__ = ["POOLERS", "Pooler", "PoolerConfig", "available_poolers", "build_pooler", "check_inputs",
           "count_parameters", "load_pooler", "register_pooler", "CLSPooling", "LastTokenPooling", "MaxPooling",
           "MeanPooling", "WeightedMeanPooling", "AdaPool", "LatentAttentionPooling", "MLPAttentionPooling",
           "PMAPooling", "GLOTConfig", "GLOTPooling", "ScalarMix"]
