"""The command-line front door: one module a command, named after its console script (tagrank-<name>)."""
