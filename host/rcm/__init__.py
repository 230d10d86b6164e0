"""Management (the patent's RCM): JNLG table, pair commands and status, control sockets."""
