"""`python -m lab ...`: the same as the `lab` command (the scheduler starts its jobs this way)."""

from lab.cli import main

main()
