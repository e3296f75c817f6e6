"""The opening of the scripts that tests end with a signal, each in a process of its own."""

# Runs once `how` holds the case. A process gets SIGINT as the shell that started the
# tests left it (a job started with `&` inherits it ignored): set it as at a terminal, and
# ignore it on purpose in the "ignored-" cases. `ignored` tells the script not to wait long
# for a signal that never acts.
SIGINT_AS_AT_A_TERMINAL = r"""
import signal
ignored = how.startswith("ignored-")
if ignored:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    how = how.removeprefix("ignored-")
else:
    signal.signal(signal.SIGINT, signal.default_int_handler)
"""
