"""The search driver's stop request: set when the process is told to stop (``ray job stop`` sends SIGTERM, which
Ray's handler raises in the main thread as ``SystemExit``; Ctrl-C), while pools search in threads of their own.

Without it those threads would run their Tune runs to the end before the process could exit, and ``ray job stop``
would SIGKILL the driver mid-work after its grace period (3 s). Each pool's run checks it: ``PoolWatch`` ends a
run at its next step, ``FollowUps`` stops handing out work. Module state, reset by every search.
"""

import threading

_STOP = threading.Event()


def request_stop() -> None:
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    _STOP.clear()
