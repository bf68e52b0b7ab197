"""What a converted SNN does: evaluation at several T from one simulation (evaluation), the scoring
loop (scoring), reports and plots (report, plots), and `inspect`'s account of a model (inspection)."""
