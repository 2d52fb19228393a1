"""DiSRouter command line: the `disrouter` command and the plumbing its subcommands share."""
