"""The operator's console: a command server on a unix socket in each node's data directory, and
the `ringstore attach` client that talks to it.

Layout: `protocol` (the line protocol both ends speak), `commands` (what each command does,
through the narrow `AdminHandle`), `server` (the socket and its sessions), `client` (the REPL).
Like `http/`, this package sees the node only through the handle: never storage or net.
"""

ADMIN_SOCKET_NAME = "admin.sock"  # in the node's data directory, next to the data it controls
