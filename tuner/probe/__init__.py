"""`tuner probe`: an α range test for a study's model (issue #52 part 1).

- `run`: the probe's config (the study's model and batch size), its run and its result;
- `plot`: probe.png, the loss against α with the suggested range;
- `record`: the probe as an MLflow run of the study's experiment.
"""

from tuner.probe.run import ProbeResult, probe

__all__ = ["ProbeResult", "probe"]
