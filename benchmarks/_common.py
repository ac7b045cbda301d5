"""Shared benchmark pieces: the timed steps, and running a configuration in a forked child (own RSS peak)."""
from __future__ import annotations

import multiprocessing as mp

import torch


def fwd(pool, h, mask):
    """Inference forward (no autograd graph)."""
    with torch.no_grad():
        pool(h, mask)


def fwd_bwd(pool, h, mask):
    """A training step's forward + backward of ``z.pow(2).sum()`` w.r.t. the pooler's parameters."""
    pool.zero_grad(set_to_none=True)
    pool(h, mask).pow(2).sum().backward()


def _child(conn, fn, kwargs):
    try:
        conn.send(("ok", fn(**kwargs)))
    except BaseException as e:  # report, don't hang the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def run_forked(fn, **kwargs) -> tuple[str, object, int | None]:
    """``fn(**kwargs)`` in a forked child -> ``("ok", result, exitcode)`` or ``("error", message, exitcode)``.

    Fork before the parent runs any torch op (forking after OpenMP work is unsafe).
    """
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, kwargs))
    proc.start()
    send.close()
    try:
        status, payload = recv.recv()
    except EOFError:  # killed (out of memory?) before it could answer
        status, payload = "error", "child died"
    proc.join()
    return status, payload, proc.exitcode
