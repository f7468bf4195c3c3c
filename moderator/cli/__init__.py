"""`moderator`: one command, sub-commands by concern (each module stays thin)."""

from __future__ import annotations

import typer

from moderator.cli import (
    enqueue,
    export,
    hashlist,
    jobs,
    listen,
    policy,
    probe,
    rescore,
    review,
    scan,
    search,
    serve,
    users,
    worker,
)
from moderator.cli import eval as eval_cli

app = typer.Typer(
    name="moderator",
    help="Scan images with CLIP and other scorers against YAML policies; store tags, flags and decisions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# In-process scanning and results
app.command("scan")(scan.scan)
app.command("export")(export.export)
app.add_typer(policy.app, name="policy")
app.add_typer(hashlist.app, name="hashlist")
# Policy lifecycle: re-score stored embeddings, evaluate, train probes, search
app.command("rescore")(rescore.rescore)
app.command("eval")(eval_cli.eval_)
app.add_typer(probe.app, name="probe")
app.command("search")(search.search)
# Queue and workers
app.command("enqueue")(enqueue.enqueue)
app.command("worker")(worker.worker)
app.command("jobs")(jobs.jobs)
app.command("listen")(listen.listen)
# People
app.command("serve")(serve.serve)
app.add_typer(review.app, name="review")
app.add_typer(users.app, name="users")


def main() -> None:
    app()
