"""The view of a study's runs in MLflow's UI, and the links that open it.

MLflow 3.17's UI opens an experiment in its "GenAI" mode whatever its `mlflow.experimentKind`
tag says; the link's `workflowType=machine_learning` opens the "Model training" runs table. That
table shows no metric or param column unless told: the link names a shared view
(`viewStateShareKey`), an experiment tag as MLflow's Share button writes, which `save_view` fills.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from tuner.store.layout import METRICS, ROLE_TAG, SEARCHED_TAG, STATUS_TAG, STUDY_PREFIX

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5000
VIEW_KEY = "tuner"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
MODEL_SECTION = "Model metrics"  # MLflow's charts section of the metrics without a prefix


def runs_url(base_url: str, experiment_id: str) -> str:
    """The page of MLflow's UI at `base_url` with the experiment's runs ranked by best_val_loss
    (the view `save_view` stored), in the "Model training" mode."""
    query = urllib.parse.urlencode({"workflowType": "machine_learning",
                                    "viewStateShareKey": VIEW_KEY})
    return f"{base_url.rstrip('/')}/#/experiments/{urllib.parse.quote(experiment_id)}/runs?{query}"


def experiments_url(base_url: str) -> str:
    """The list of experiments in MLflow's UI at `base_url`."""
    return f"{base_url.rstrip('/')}/#/experiments"


def local_url(host: str, port: int) -> str:
    """The address a browser on this machine opens for a server listening on `host`."""
    return f"http://{url_host(host)}:{port}"


def url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):  # every interface: this machine's through its loopback
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def save_view(client: Any, experiment_id: str) -> None:
    """Store on the experiment the view `runs_url` opens: its runs ranked by best_val_loss, with
    val_loss, every searched param and tuner.status as columns, every run in the charts."""
    trials = client.search_runs([experiment_id], max_results=1000,
                                filter_string=f"tags.`{ROLE_TAG}` = 'trial'")
    searched = sorted({name for run in trials
                       for name in run.data.tags.get(SEARCHED_TAG, "").split(",") if name})
    columns = ["metrics.`best_val_loss`", "metrics.`val_loss`",
               *(f"params.`{name}`" for name in searched), f"tags.`{STATUS_TAG}`"]
    # MLflow nests trials under their parent only in a table sorted by start time, collapsed;
    # its charts draw the first 10 runs unless told to draw all
    view = {"orderByKey": "metrics.`best_val_loss`", "orderByAsc": True,
            "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL", **_charts()}
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(view))


def _charts() -> dict[str, Any]:
    """The charts of the view: the trials' curves first, val_loss leading (MLflow would sort
    sections and charts by name, the study's `study/` section first), then the study's. MLflow
    adds a chart for each metric not listed, at the end of its section."""
    sections = {"tuner-trials": MODEL_SECTION, "tuner-study": STUDY_PREFIX.rstrip("/")}
    trial_metrics = dict.fromkeys(["val_loss", "best_val_loss", *METRICS, "tokens_trained"])
    charts = [{"uuid": f"tuner-{metric}", "type": "LINE", "metricSectionId": "tuner-trials",
               "metricKey": metric, "selectedMetricKeys": [metric], "displayName": metric,
               "isGenerated": True, "deleted": False, "runsCountToCompare": 10,
               "xAxisKey": "step", "selectedXAxisMetricKey": "", "xAxisScaleType": "linear",
               "scaleType": "linear", "yAxisKey": "metric", "yAxisExpressions": [], "range": {},
               "lineSmoothness": 0, "ignoreOutliers": False, "useGlobalXaxisKey": True,
               "useGlobalLineSmoothing": True} for metric in trial_metrics]
    return {"compareRunCharts": charts, "isAccordionReordered": True, "compareRunSections": [
        {"uuid": uuid, "name": name, "display": True, "isReordered": uuid == "tuner-trials"}
        for uuid, name in sections.items()]}
