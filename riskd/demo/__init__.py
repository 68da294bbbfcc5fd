"""``riskd demo``: the whole loop on an embedded PostgreSQL — a simulated market (``simulator``),
the daemon in-process, and a live terminal view (``view``); ``demo`` runs them together."""
