"""Run one benchmark configuration in a forked child, so its RSS high-water mark belongs to it alone."""
from __future__ import annotations

import multiprocessing as mp


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
