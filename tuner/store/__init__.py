"""The tracking store: every access to MLflow goes through here. `tuner.search` writes a study
through it, `tuner.inspect` reads one (docs/mlflow_layout.md).

- `uri`: tracking URIs (a sqlite file, made absolute; a server's address without credentials);
- `redact`: credentials kept out of what tuner prints and records;
- `connect`: the checks of a store, and a client that has answered;
- `sqlite_store`: a new sqlite store made whole or not at all, and one found half-made named;
- `layout`: the names of a study's tags, metrics and artifacts;
- `runs`: finding a study's parent and trial runs, ranking them, reading their artifacts;
- `rows`: one trial as tables and descriptions show it;
- `write`: a run's metrics, params and tags in batches;
- `view`: the view of a study's runs in MLflow's UI, and links to it.
"""
