"""Judging a run: run the candidate, measure it, verify its model, turn the measurements into an
outcome and a reward.

``runner`` drives one step; ``telemetry`` parses the log-line protocol; ``timing`` and
``gpu_telemetry`` are the harness's own clocks and meters; ``verify``, ``verifier``,
``verify_worker`` and ``audit`` re-evaluate the checkpoint in a fresh sandbox; ``rules`` is the
pure function from measurements to an outcome; ``significance``, ``steps``, ``progress`` and
``rewards`` are the statistics the reward reads.
"""
