"""Keeping records: every step's artifacts on disk, the SQLite run store that indexes them, and
what reads them back (``nanoenv runs``, the HTML report, the plots).

``artifacts`` writes a step's folder; ``store`` indexes it (``nanoenv.liveness`` says whether
a running step's owner still lives); ``runs_cli``, ``report`` and ``plots`` read them.
"""
