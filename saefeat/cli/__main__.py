"""`python -m saefeat.cli ...`: the `saefeat` command (e.g. under -X importtime)."""

from saefeat.cli import app

app(prog_name="saefeat")
