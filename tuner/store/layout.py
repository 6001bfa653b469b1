"""The MLflow layout of a study (docs/mlflow_layout.md): the names of its tags, metrics and
artifacts, which the recorder writes and the commands read."""

from __future__ import annotations

# A trial's metrics at each evaluation, at step = tokens; the gradient noise scale B_simple (in
# sequences and in tokens) only at the evaluations that measure it
METRICS = ("train_loss", "val_loss", "val_ppl", "lr", "grad_norm", "tokens_per_s", "mfu",
           "elapsed_s", "noise_scale", "noise_scale_tokens")
FORK_METRIC = "fork_val_loss"  # a WSD fork's val_loss, at step = tokens of the run it stands for
STUDY_TAG, TRIAL_TAG = "tuner.study", "tuner.trial_id"
RESUMED_COMMIT_TAG = "tuner.git_commit_resumed"
EXTENDED_TAG = "tuner.extended"  # a study's samples as started, then at each extension
ROLE_TAG, STATUS_TAG = "tuner.role", "tuner.status"
# A trial run's status (its STATUS_TAG)
RUNNING, COMPLETED, STOPPED = "running", "completed", "stopped"
DIVERGED, FAILED = "diverged", "failed"
FINISHED = (COMPLETED, STOPPED, DIVERGED, FAILED)
UNRANKED = (DIVERGED, FAILED)  # a low loss before the end does not make such a config the best
# A confirmation run (tuner.role "confirmation", under the parent): the trial it trains again
# with another seed (its trial id and run id); the parent's verdict once confirmations ran
CONFIRMATION = "confirmation"
CONFIRMS_TAG, CONFIRMS_RUN_TAG = "tuner.confirms", "tuner.confirms_run"
VERDICT_TAG = "tuner.confirmation"
CONFIRM_HOST_TAG = "tuner.host"  # a confirmation run's: the machine whose process trains it
SEED_CHECK_JSON = "seed_check.json"  # the parent's artifact: the verdict's whole test
STOP_REASON_TAG = "tuner.stop_reason"  # the parent's: why the study ended before its trial count
# A replayed study's parent (`tuner search --curve-table`): "SHA256 PATH" of the table of curves
# that answered its trials instead of training (docs/curves.md)
CURVE_TABLE_TAG = "tuner.curve_table"
SEARCHED_TAG = "tuner.searched"  # a trial run's searched params; logged last when it starts
PBT_TAG = "tuner.pbt_config"  # the values PBT last gave a trial (JSON)
SYMBOLS_TAG = "tuner.symbols"  # a trial run's param names -> their symbols (JSON)
NOTE_TAG = "mlflow.note.content"  # a run's description: what its page in MLflow's UI shows first
# The parent run's metrics: names of their own, so MLflow's UI charts them apart from the trials'
STUDY_PREFIX = "study/"
# A transfer study's: the parent's names the model field it transfers, each trial's its size
TRANSFER_TAG, SIZE_TAG = "tuner.transfer", "tuner.transfer_size"
DATASET_TAG = "tuner.dataset_sha256"  # the dataset's identity (provenance.dataset_sha256)
# A `tuner scale` fit's run: its role is "scale", this tag its name (docs/commands.md#tuner-scale)
SCALE_TAG = "tuner.scale"
SCALE_EXPERIMENT = "scaling"  # the MLflow experiment of the fits
DEVICE_TAG = "tuner.device"  # what the trial trained on: cpu, or cuda with the GPU's model
NODE_TAG = "tuner.node"  # the Ray nodes a trial trained on: "IP NODE_ID" each, comma-separated
# A failed trial's: "trainer" (it raised; the searcher was told the worst val_loss) or "process"
# (its process kept failing and Tune failed it: the searcher left it out)
FAILED_IN_TAG = "tuner.failed_in"
# which checkpoint -> (artifact folder, tag of its sha256); the file is checkpoint.pt in both
CHECKPOINTS = {"final": ("checkpoint", "tuner.checkpoint_sha256"),
               "mid": ("checkpoint_mid", "tuner.checkpoint_mid_sha256")}
# A `tuner probe` run's: "range" when it found an α_max range, else why not (docs/commands.md)
PROBE_OUTCOME_TAG = "tuner.probe.outcome"
