"""tricopy's host stack.  The folders follow the data flow of one write:

* ``nbd/``       the host's front end: NBD exports of PVOLs and SVOLs
* ``primary/``   MASTER groups: apply, write log, journal to the relay
* ``wire/``      the one frame format, TCP links, PSEQ arithmetic, test vectors
* ``relay/``     INTERMEDIARY groups: dedup, engine stamping, ACK, forwarding
* ``engine/``    the journal engine contract and its model/sim/board backends
* ``journal/``   the relay's journal volume (ring store, group commit)
* ``secondary/`` RESTORE groups: verify, stage, restore in SEQ# order
* ``disk/``      data volumes and crash-safe state files
* ``rcm/``       management: JNLG table, pair commands, status, control sockets
* ``tools/``     the demo and the benchmarks (not used by the sites)
"""
