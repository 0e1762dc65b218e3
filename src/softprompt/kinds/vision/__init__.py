"""kinds/vision: Vision Transformers, visual prompt tuning (VPT)."""
