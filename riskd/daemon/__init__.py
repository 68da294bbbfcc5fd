"""``riskd run``, one module per step of the loop (DESIGN §2):

* ``listen``: LISTEN on ``riskd_changes``, self-pinged; wakes the drainer;
* ``drain``: the dirty set into the debouncer, re-arming the wake-up;
* ``debounce``: per account, a quiet period bounded by ``max_delay``, riskiest first (pure);
* ``checker``: due accounts in batches, a risk lane beside the main one, the failure policy;
* ``sweep``: the sweep leader's periodic set-based pass, its candidates through the checker;
* ``report``: the heartbeat (``stats``), health, systemd's watchdog; ``metrics``, ``sdnotify``;
* ``preflight``: what the database must hold before the loop starts;
* ``daemon``: the assembly — builds the parts, starts every task in one place, stops;
* ``shared``: what the parts share (settings, clock, counters, debouncer, pool, the stop);
* ``faults``: what can go wrong, by how it is met.
"""
