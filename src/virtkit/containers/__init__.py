"""OS-level virtualization: containers. ``runtime`` is an OCI runtime with runc's command line
(``virtkit-runc``, ``virtkit runtime``); ``init`` builds a container's world from ``config.json``; ``spec``
reads and writes ``config.json``; ``linux`` has the system calls Python lacks."""
