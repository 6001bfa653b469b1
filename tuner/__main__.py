"""The `tuner` command and `python -m tuner`: stops are taken from the first line on, so that one
during the second of imports the command line needs aborts it as at any later point ("aborted",
exit 130), never with a traceback."""

from model.shell import aborted, stamp_arrivals, stops_as_ctrl_c


def main() -> None:
    """Entry point: set the stops' handlers, then import and run the command line."""
    stops_as_ctrl_c()
    stamp_arrivals()
    try:
        from tuner.cli import main as run
    except KeyboardInterrupt:
        aborted()
    run()


if __name__ == "__main__":
    main()
