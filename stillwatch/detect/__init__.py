"""Detection signals that need no gateway: each returns named scores. Imports tasks/errors only, never guard."""
