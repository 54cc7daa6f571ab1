"""One module per `fewbits` verb: ``add_arguments(parser)`` and ``run(args) -> int``."""
