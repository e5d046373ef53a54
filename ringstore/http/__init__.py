"""HTTP/1.1 on h11: the Riak-compatible KV API, stats, metrics and the web page."""
