"""The command line: one module per command (``cmd_<name>.py``), each a thin layer over
one library call that renders a human table or ``--json``."""
