"""study.html: a study's report as one self-contained page (the summary, every figure inline, a
table of the trials sortable by any column); it loads nothing from elsewhere."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from tuner.inspect import plots
from tuner.inspect.findings import NO_BEST, Findings
from tuner.inspect.plots import IMPORTANCE_PNG, LOSS_PNG, LR_PNG, PARALLEL_PNG, TRANSFER_PNG
from tuner.space.params import shown_value, symbol
from tuner.store.rows import TrialRow, noise_text, shown_noise

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort=ascending]::after { content: " ▲"; } th[aria-sort=descending]::after { content: " ▼"; }
td.text { text-align: left; font-family: ui-monospace, monospace; }
tr.best td { font-weight: 600; background: #fff6d5; }
div.wide { overflow-x: auto; } img { max-width: 100%; }
figure { margin: 1em 0 2em; } figcaption { color: #555; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""
# Sorts a table by the clicked column: numbers (a cell's data-sort) as numbers, else as text
SCRIPT = """
for (const th of document.querySelectorAll("table.sortable th")) {
  th.addEventListener("click", () => {
    const body = th.closest("table").tBodies[0], col = th.cellIndex;
    const up = th.getAttribute("aria-sort") !== "ascending";
    for (const other of th.parentNode.cells) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    const key = (row) => row.cells[col].dataset.sort ?? row.cells[col].textContent;
    const order = (a, b) => {
      const x = Number(key(a)), y = Number(key(b));
      const c = isNaN(x) || isNaN(y) ? key(a).localeCompare(key(b)) : x - y;
      return up ? c : -c;
    };
    body.append(...[...body.rows].sort(order));
  });
}
"""


def _esc(text: object) -> str:
    return html.escape(str(text))


def _number(value: float, digits: int) -> str:
    """A finite value to `digits` decimals, else a dash."""
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def _cell(text: str, sort: float | None = None, is_text: bool = False) -> str:
    sorted_by = f' data-sort="{"Infinity" if sort == math.inf else sort}"' \
        if sort is not None else ""
    kind = ' class="text"' if is_text else ""
    return f"<td{kind}{sorted_by}>{_esc(text)}</td>"


def trials_table(found: Findings) -> str:
    """Every trial, best first: rank, id, status, best val_loss and where it was reached, the
    tokens it trained, its gradient noise scale at its end, its searched values, its MLflow
    run."""
    names = list(dict.fromkeys(n for row in found.rows for n in row.params))
    head = ["#", "trial", "status", "best val_loss", "perplexity", "reached at (tokens)",
            "tokens trained", "B_simple at its end", *map(symbol, names), "MLflow run"]
    body = []
    for rank, row in enumerate(found.rows, 1):
        values = []
        for n in names:
            shown = shown_value(n, row.params.get(n, "–"))
            try:
                values.append(_cell(shown, float(shown)))
            except ValueError:  # a word: true, off, a schedule's name
                values.append(_cell(shown, is_text=True))
        cls = ' class="best"' if row is found.best else ""
        body.append(f"<tr{cls}>" + "".join([
            _cell(str(rank), rank), _cell(row.trial_id, is_text=True),
            _cell(row.status, is_text=True),
            _cell(_number(row.val_loss, 4), row.val_loss),
            _cell(_number(row.perplexity, 2), row.perplexity),
            _cell(f"{found.reached_at(row):,}", found.reached_at(row)),
            _cell(f"{row.tokens:,}", row.tokens),
            _cell("–", -1) if row.noise_scale is None
            else _cell(shown_noise(row.noise_scale), row.noise_scale), *values,
            _cell(row.run_id, is_text=True)]) + "</tr>")
    return ('<div class="wide"><table class="sortable" id="trials"><thead><tr>'
            + "".join(f'<th title="sort by {_esc(h)}">{_esc(h)}</th>' for h in head)
            + "</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table></div>")


def _best_section(found: Findings) -> str:
    """The winner, its margin, its values beside the runner-up's, and how to reproduce it."""
    row = found.best
    if row is None:
        return f"<h2>Best trial: none</h2><p>{_esc(NO_BEST)}</p>"
    second: TrialRow | None = found.runner_up
    columns = [row] + ([second] if second else [])
    names = list(dict.fromkeys(n for r in columns for n in r.params))
    head = "".join(f"<th>{label} {_esc(r.trial_id)}</th>"
                   for label, r in zip(("best", "runner-up"), columns))
    rows = "".join(f"<tr><td class=text>{_esc(symbol(n))}</td>" + "".join(
        f"<td>{_esc(shown_value(n, r.params.get(n, '–')))}</td>" for r in columns) + "</tr>"
        for n in names)
    values = (f"<table><thead><tr><th>parameter</th>{head}</tr></thead><tbody>{rows}"
              "</tbody></table>" if names else
              "<p>The study searched no parameter: its file fixes each.</p>")
    again = ("<p>PBT changed its values as it ran (those it ended with are shown): no one config "
             "reproduces it.</p>" if row.pbt else
             f"<p>Reproduce it: <code>{_esc(found.replay_cmd)}</code></p>")
    noise = noise_text(row)
    return (f'<h2>Best trial: <span id="best-trial">{_esc(row.trial_id)}</span></h2>'
            f"<p>{_esc(found.winner())} MLflow run <code>{_esc(row.run_id)}</code>.</p>"
            + (f"<p>Gradient noise scale: {_esc(noise)}.</p>" if noise else "")
            + f"{values}{again}")


def _captions(found: Findings) -> dict[str, str]:
    """What each figure measured, and when."""
    imp = found.importance
    reached = [found.reached_at(r) for r in found.rows if r.usable] or [0]
    return {
        LOSS_PNG: "val_loss of every trial at each of its evaluations, against the tokens it "
                  "had trained (log scale); right: the best trials zoomed, each labelled with "
                  "its val_loss, its gap to the best and its values.",
        PARALLEL_PNG: "Each trial that can be the best: its searched values and its best "
                      f"val_loss, reached at {min(reached):,} to {max(reached):,} tokens.",
        IMPORTANCE_PNG: (f"fANOVA importance over the {found.note}; whiskers: "
                         f"{imp.spread()}." if imp else ""),
        TRANSFER_PNG: (f"Each trial's best val_loss against its {found.transfer.axis} at each "
                       f"{found.transfer.field}: {found.transfer.verdict()}."
                       if found.transfer else ""),
        LR_PNG: "The best trial's learning rate at every step; dots: the α it logged at each "
                "evaluation.",
        plots.NOISE_PNG: "The best trials' gradient noise scale B_simple = tr(Σ)/|G|² (in "
                         "sequences) at the evaluations that measured it, and each one's B "
                         "(dotted): a B well below B_simple takes more steps than it needs, one "
                         "well above it more tokens.",
    }


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure id="{_esc(path.stem)}"><img alt="{_esc(path.name)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_esc(path.name)}: '
            f"{_esc(caption)}</figcaption></figure>")


def study_html(found: Findings, images: list[Path]) -> str:
    """The page: summary, the curves, the trials' table, then the other figures."""
    by_name, captions = {p.name: p for p in images}, _captions(found)

    def figure(name: str) -> str:
        return _figure(by_name[name], captions[name]) if name in by_name else ""

    importance = "" if found.importance else \
        f"<p>Parameter importance not computed: {_esc(found.note)}.</p>"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Study {_esc(found.study)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Study {_esc(found.study)}</h1>", f"<p>{_esc(found.counts())}</p>",
        _best_section(found),
        "<h2>Seed check</h2><ul>" + "".join(f"<li>{_esc(line)}</li>" for line in found.seed_check)
        + "</ul>" if found.seed_check else "",
        figure(TRANSFER_PNG) and f"<h2>Transfer</h2>{figure(TRANSFER_PNG)}",
        "<h2>Curves</h2>", figure(LOSS_PNG),
        f"<h2>Trials</h2><p>{len(found.rows)} trials, best first; click a column's header to "
        "sort by it.</p>", trials_table(found),
        "<h2>Values</h2>", figure(PARALLEL_PNG), figure(IMPORTANCE_PNG), importance,
        figure(LR_PNG) and f"<h2>Learning rate</h2>{figure(LR_PNG)}",
        figure(plots.NOISE_PNG)
        and f"<h2>Batch size and gradient noise</h2>{figure(plots.NOISE_PNG)}",
        f"<script>{SCRIPT}</script></body></html>", ""])
