"""Pure argv builders: no I/O, one function per command line, tested for exact argv."""
