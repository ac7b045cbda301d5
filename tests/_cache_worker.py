"""Subprocess for the kill-and-resume test: build a cache and SIGKILL itself right after shard N is written.

usage: python _cache_worker.py OUT_DIR KILL_AFTER_SHARDS BATCH_SIZE SHARD_TOKENS < texts.json
"""
import json
import os
import signal
import sys

import glotpool.states.cache as cache_mod
from glotpool.states.backbone import load_backbone

out_dir, kill_after, batch_size, shard_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
texts = json.load(sys.stdin)
real_write = cache_mod._write_shard
written = 0


def write_then_die(path, states):
    global written
    rec = real_write(path, states)
    written += 1
    if written == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)  # hard kill: no cleanup, no finally blocks
    return rec


cache_mod._write_shard = write_then_die
cache_mod.build_cache(load_backbone("minilm"), texts, out_dir, batch_size=batch_size, shard_tokens=shard_tokens,
                      show_progress=False)
print("finished without being killed", file=sys.stderr)
