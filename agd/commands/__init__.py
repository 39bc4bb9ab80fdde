"""The work behind each CLI command, as plain functions (the CLI only parses arguments)."""
