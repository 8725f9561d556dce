"""``python -m cli``: the same as the ``vector-sync`` command."""

from cli.main import main

if __name__ == "__main__":
    main()
