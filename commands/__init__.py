"""The jdna command line: one thin typer module per subcommand (shipped as the package jdna.commands)."""
