"""The live session: minute bars from the broker, aggregated, through the one decision path
to orders."""
