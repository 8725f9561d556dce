"""The ``vector-sync`` command: above the three process packages; core imports nothing from here."""
