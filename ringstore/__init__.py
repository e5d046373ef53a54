"""ringstore: a Riak-style replicated object store on Trio, h11 and LMDB."""

__version__ = "0.1.0"
