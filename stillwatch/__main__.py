"""`python -m stillwatch` runs the CLI."""

from stillwatch.cli import main

main()
