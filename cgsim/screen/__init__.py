"""``cgsim screen``: transport of new PEO + LiTFSI compositions from a learned electrolyte model.

Brief all-atom MD of each composition, mapped as the model's training data, rolled out with
replicas, analysed with error bars; one table over the compositions. Modules: ``config``
(schema), ``composition`` (the user's compositions), ``training`` (what the training runs
span: EO:Li, chain length, densities), ``pipeline`` (MD, mapping, rollout through the
project's verbs), ``stages`` (resumable stage records), ``coordination``, ``transport``,
``report``, ``table`` and ``command`` (the verb). Details: docs/architecture.md.
"""

from cgsim.screen.command import run

__all__ = ["register_configs", "run"]


def register_configs() -> None:
    """Register the structured-config schema of ``conf/screen.yaml``."""
    from cgsim.screen.config import register

    register()
