"""The evaluation report behind ``cgsim evaluate``: loading, observables suite, figures, markdown.

- :mod:`cgsim.report.loading`  bead trajectories (file + sidecar, or dataset directory)
- :mod:`cgsim.report.settings` bins, ranges and windows fixed from the reference
- :mod:`cgsim.report.suite`    pooled observables of a set
- :mod:`cgsim.report.compare`  summaries and error measures
- :mod:`cgsim.report.figures`  PNG overlays of reference, rollout and reference halves
- :mod:`cgsim.report.markdown` ``report.md``
"""
