"""Judging with UnifiedReward: the official prompts, answer parsers, and scoring of pairs and points."""
