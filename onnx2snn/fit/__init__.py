"""What a conversion fits to the SNN's T on calibration samples: the corrections (correction), the
readout delay (delay), the calibration length (tuning), and the order `convert` runs them in (steps)."""
