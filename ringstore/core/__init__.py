"""Pure logic: no trio, no disk, no sockets, no threads, no wall clock, no global random."""
