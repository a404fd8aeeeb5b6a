"""Layer 4, training: the loop (trainer), one optimizer step with its numeric safety (stepper, clip,
guard), weight averages, the series read once per log window, callbacks and loggers, and the
session that trains one recipe into a run folder."""
