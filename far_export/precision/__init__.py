"""Precision rewriting: fp16 keep-lists, int8 Q/DQ, calibration on real sampling runs, the precision table."""
