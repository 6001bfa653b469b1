"""A study's live view in a Jupyter notebook: one output, redrawn in place through an IPython
display handle, where a terminal has rich's Live (which, in a notebook, needs ipywidgets)."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

# How rich prints to a notebook (rich.jupyter's format): the text in its colours, as it wraps
HTML = ("<pre style=\"white-space:pre;overflow-x:auto;line-height:normal;font-family:Menlo,"
        "'DejaVu Sans Mono',consolas,'Courier New',monospace\">{code}</pre>")


class NotebookLive:
    """Shows a rich renderable as one output of the running cell; `update` redraws it there."""

    def __init__(self, console: Console, renderable: Any):
        from IPython.display import display

        self._width = console.width
        self._handle = display(self._bundle(renderable), raw=True, display_id=True)

    def update(self, renderable: Any) -> None:
        self._handle.update(self._bundle(renderable), raw=True)

    def stop(self) -> None:
        """Nothing to stop: the output stays as last drawn."""

    def _bundle(self, renderable: Any) -> dict[str, str]:
        """The renderable as plain text and as coloured HTML."""
        record = Console(record=True, file=io.StringIO(), width=self._width, force_jupyter=False,
                         force_terminal=True, color_system="truecolor")
        record.print(renderable)
        return {"text/plain": record.export_text(clear=False),
                "text/html": record.export_html(inline_styles=True, code_format=HTML)}
