"""Achievable bounds: P1 layer gaps, P2 projection ladder, P3 YES cascade, and their scoring."""
