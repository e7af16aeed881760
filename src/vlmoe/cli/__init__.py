"""The `vlmoe` command line: one module per subcommand, each with a testable `main(argv)`."""
