"""Code that runs inside the sandbox: the fork server and the two processes it forks per program.

These modules import nothing from the harness: the server (``server.py``) is started as a script by
``harness.sandbox.box`` (under bubblewrap this folder is bound read-only at ``/sandbox``) and imports its
siblings by their plain names. ``plain`` is also imported by the harness's tests.
"""
