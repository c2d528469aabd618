"""One module per `medvol` verb: `register(subparsers)` and `run(args)`."""
