"""kinds/causal_lm"""
